"""detections-store that dies (SIGKILL) between the upload and the status update of its first
document, as a worker killed at the worst moment would. Test-only: the crash test serves it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from functions.detections import outbox
from functions.detections.store import detections_store

__all__ = ["detections_store"]
MARKER = Path(os.environ["CRASH_MARKER"])  # written once the crash happened: crash only once
_mark_ready = outbox.mark_ready


def mark_ready(*args: Any, **kwargs: Any) -> bool:
    if not MARKER.exists():
        MARKER.write_text("crashed after the upload\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return _mark_ready(*args, **kwargs)


outbox.mark_ready = mark_ready
