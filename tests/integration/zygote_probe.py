"""A child for tests/integration/test_zygote.py: `python -m tests.integration.zygote_probe
<exit code> [wait]` prints its argv and OBJECTFLOW_COMPONENT, then exits with that code, or
with `wait`, first waits until SIGTERM."""

import os
import signal
import sys

# one write: two probes share the log file, and an unbuffered print writes piece by piece
sys.stdout.write(f"argv {sys.argv[1:]} component {os.environ.get('OBJECTFLOW_COMPONENT')}\n")
sys.stdout.flush()
if "wait" in sys.argv:
    signal.sigwait({signal.SIGTERM})
raise SystemExit(int(sys.argv[1]))
