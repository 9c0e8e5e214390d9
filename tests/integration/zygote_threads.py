"""Imported by a zygote in tests/integration/test_zygote.py: a module that starts a thread at
import, which the zygote must refuse to fork with."""

import threading

threading.Thread(target=threading.Event().wait, daemon=True).start()
