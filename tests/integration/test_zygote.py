"""The runtime's zygote (devstack/runtime/zygote.py) forking real processes: each one gets its
own environment (in /proc too), output, name and exit code, and none outlives the zygote. These
zygotes preload one small module instead of the runtime's libraries (seconds of CPU each)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from devstack.runtime.zygote import Zygote, ZygoteGone
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests.integration.zygote_probe"
LIGHT = ("json",)


def test_a_forked_child_is_its_own_process_with_its_own_env_output_and_exit_code(
    tmp_path: Path,
) -> None:
    log = tmp_path / "probe.log"

    async def scenario() -> tuple[int, int, dict[str, str], str, list[str], int | None, int | None]:
        zygote = Zygote(dict(os.environ), ROOT, LIGHT)
        watching = asyncio.ensure_future(zygote.watch())
        try:
            with log.open("ab") as out:
                env = {"PATH": os.environ["PATH"], "OBJECTFLOW_COMPONENT": "probe-1"}
                waiting = await asyncio.to_thread(
                    zygote.spawn, [PROBE, "0", "wait"], env, ROOT, out.fileno(), "probe-1"
                )
                exiting = await asyncio.to_thread(
                    zygote.spawn, [PROBE, "3"], env, ROOT, out.fileno(), "probe-2"
                )
            code = await exiting.wait()
            proc = psutil.Process(waiting.pid)
            environ, name, parent, cmdline = (
                proc.environ(),
                proc.name(),
                proc.ppid(),
                proc.cmdline(),
            )
            zygote_cmdline = psutil.Process(zygote.process.pid).cmdline()
            assert zygote_cmdline[:3] == ["python", "-m", "devstack.runtime.zygote"]
            os.kill(waiting.pid, signal.SIGTERM)
            return waiting.pid, parent, environ, name, cmdline, await waiting.wait(), code
        finally:
            zygote.close()
            await watching

    pid, parent, environ, name, cmdline, terminated, code = asyncio.run(scenario())
    assert pid != os.getpid() and parent != os.getpid()  # the zygote's child, not ours
    assert environ == {"PATH": os.environ["PATH"], "OBJECTFLOW_COMPONENT": "probe-1"}
    assert name == "probe-1"
    assert cmdline == [sys.executable, "-m", PROBE, "0", "wait"]  # as `ps` shows it
    assert (terminated, code) == (-signal.SIGTERM, 3)
    lines = log.read_text().splitlines()
    assert "argv ['0', 'wait'] component probe-1" in lines
    assert "argv ['3'] component probe-1" in lines


def test_children_die_with_the_zygote_and_it_with_its_parent(tmp_path: Path) -> None:
    """The zygote's parent (here a throwaway one, as the supervisor) is SIGKILLed: the zygote
    and the process it forked get SIGTERM, so nothing is left."""
    import subprocess

    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "pids")], cwd=ROOT, env=dict(os.environ)
    )
    pids_file = tmp_path / "pids"
    pids = wait_for(lambda: pids_file.exists() and pids_file.read_text().split(), timeout=60)
    zygote, child = map(int, pids)
    assert psutil.Process(child).ppid() == zygote
    parent.kill()
    parent.wait()
    wait_for(lambda: not psutil.pid_exists(zygote), what="the zygote to end")
    wait_for(lambda: not psutil.pid_exists(child), what="its child to end")


PARENT = """
import asyncio, os, sys
from pathlib import Path
from devstack.runtime.zygote import Zygote

async def main():
    zygote = Zygote(dict(os.environ), Path.cwd(), ("json",))
    asyncio.ensure_future(zygote.watch())
    child = await asyncio.to_thread(
        zygote.spawn, ["tests.integration.zygote_probe", "0", "wait"], dict(os.environ),
        Path.cwd(), 1, "probe")
    Path(sys.argv[1] + ".tmp").write_text(f"{zygote.process.pid} {child.pid}")
    Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_zygote_whose_preload_starts_a_thread_refuses_to_fork() -> None:
    async def scenario() -> None:
        zygote = Zygote(dict(os.environ), ROOT, ("tests.integration.zygote_threads",))
        watching = asyncio.ensure_future(zygote.watch())
        with pytest.raises(ZygoteGone):
            await asyncio.to_thread(zygote.spawn, [PROBE, "0"], dict(os.environ), ROOT, 1, "p")
        await watching
        assert zygote.gone and zygote.process.wait(timeout=30) != 0

    asyncio.run(scenario())
