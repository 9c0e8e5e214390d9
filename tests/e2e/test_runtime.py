"""The local runtime as a whole: no process outlives it, whatever way it ends.

These tests kill and restart the machine's one runtime (run them through /work/wt/e2e.sh), and
leave it running the e2e diagram as they found it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import psutil

from devstack import process, wiring
from devstack.config import PATHS
from devstack.runtime import supervisor
from tests.support import E2E_OVERLAY, start_stack, wait_for


def objectflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "devstack.cli", *args], check=True)


def runtime_pid() -> int:
    return int(PATHS.pid("runtime").read_text())


def runtime_processes() -> list[psutil.Process]:
    """Every process the supervisor tags (OBJECTFLOW_COMPONENT), whoever started it."""
    found = []
    for proc in psutil.process_iter():
        try:
            if "OBJECTFLOW_COMPONENT" in proc.environ():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def servers(processes: list[psutil.Process]) -> Counter[str]:
    """How many top-level processes run per component (a server's workers not counted)."""
    pids = {p.pid for p in processes}
    return Counter(p.environ()["OBJECTFLOW_COMPONENT"] for p in processes if p.ppid() not in pids)


def test_sigkilled_runtime_leaves_nothing_behind_and_restarts_cleanly() -> None:
    values = wiring.load(E2E_OVERLAY)
    expected = Counter(c.name for c in supervisor.components(values, [E2E_OVERLAY]))
    assert expected["mqtt-bridge"] == 1 and expected["cron-ticker"] == 1

    os.kill(runtime_pid(), signal.SIGKILL)
    start_stack()

    supervisor_pid = runtime_pid()
    processes = runtime_processes()
    assert servers(processes) == expected
    for proc in processes:  # all from this start: descendants of the new supervisor
        assert supervisor_pid in [p.pid for p in proc.parents()], proc.cmdline()
    for name in expected:
        log = (supervisor.LOGS / f"{name}.log").read_text(errors="replace")
        this_start = log.rsplit(supervisor.STARTED, 1)[-1]
        assert "Address already in use" not in this_start, name
    records = supervisor.recorded_children()
    assert {supervisor.health_state(n, records) for n in expected if records[n]["port"]} == {"up"}

    try:
        objectflow("down", "--runtime-only")
        assert not process.alive(supervisor_pid)
        assert runtime_processes() == []
    finally:
        start_stack()


def test_a_port_held_by_a_stranger_is_refused_with_its_holder() -> None:
    values = wiring.load(E2E_OVERLAY)
    port = values.function_ports()["echo"]
    objectflow("down", "--runtime-only")
    stranger = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: process.port_holder(port), what=f"the stranger on {port}")
        up = subprocess.run(
            [sys.executable, "-m", "devstack.cli", "up", "--values", str(E2E_OVERLAY)],
            capture_output=True,
            text=True,
        )
        assert up.returncode != 0
        output = " ".join((up.stdout + up.stderr).split())
        assert f"port {port} (echo) is held by pid {stranger.pid}" in output
        assert runtime_processes() == []
    finally:
        stranger.terminate()
        stranger.wait()
        start_stack()
