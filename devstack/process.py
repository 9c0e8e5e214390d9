"""One generic way to start, stop and inspect a service process, driven by its ServiceSpec.

Each service runs in its own session (process group == its pid), writes to `logs/<name>.log`, and
is known only by `run/<name>.pid`: nothing is ever found or killed by name.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import psutil
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from devstack.config import HOST, PATHS, Paths
from devstack.errors import DevstackError
from devstack.services import ServiceSpec


def read_pid(spec: ServiceSpec, paths: Paths = PATHS) -> int | None:
    try:
        return int(paths.pid(spec.name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (an unreaped child still answers kill 0)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for throwaway servers)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_holder(port: int) -> str | None:
    """Who listens on 127.0.0.1:`port` ("pid 123 (python -m x)"), or None if nobody does."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "a process of another user"
            with suppress(psutil.Error):
                return f"pid {conn.pid} ({shlex.join(psutil.Process(conn.pid).cmdline())[:120]})"
            return f"pid {conn.pid}"
    return None


def reap(records: Iterable[tuple[int, float]], timeout: float = 10.0) -> int:
    """End the processes recorded as (pid, create_time) that still run, with their descendants:
    SIGTERM, then SIGKILL after `timeout`. A recycled pid (another create time) is left alone.
    Returns how many processes were ended."""
    victims: list[psutil.Process] = []
    for pid, created in records:
        with suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                victims += [proc, *proc.children(recursive=True)]
    for proc in victims:
        with suppress(psutil.Error):
            proc.terminate()
    _, still = psutil.wait_procs(victims, timeout=timeout)
    for proc in still:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(still, timeout=5)
    return len(victims)


def our_pid(spec: ServiceSpec, paths: Paths = PATHS) -> int | None:
    """The pid from our pid file if that process is still alive."""
    pid = read_pid(spec, paths)
    return pid if pid is not None and alive(pid) else None


def is_up(spec: ServiceSpec, paths: Paths = PATHS) -> bool:
    return our_pid(spec, paths) is not None and port_open(spec.port)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def start_error(spec: ServiceSpec, reason: str, paths: Paths = PATHS) -> DevstackError:
    log = paths.log(spec.name)
    return DevstackError(
        f"{spec.name} failed to start: {reason}\n"
        f"  command: {shlex.join(spec.command)}\n"
        f"  log: {log} (last lines below)\n{log_tail(log)}"
    )


def spawn(spec: ServiceSpec, paths: Paths = PATHS) -> subprocess.Popen[bytes]:
    log = paths.log(spec.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    paths.pid(spec.name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== objectflow {time.ctime()}: {shlex.join(spec.command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.data(spec.name),
            env={**os.environ, **spec.env},
            user=spec.user,
            group=spec.user,
            extra_groups=[] if spec.user else None,
            start_new_session=True,  # survives the CLI, and its group can be killed as one
        )
    paths.pid(spec.name).write_text(f"{proc.pid}\n")
    return proc


def wait_ready(spec: ServiceSpec, pid: int, paths: Paths = PATHS) -> None:
    """Wait until the port accepts connections; fail at once if the process dies meanwhile."""

    def ready() -> bool:
        if not alive(pid):
            raise start_error(spec, "the process exited", paths)
        return port_open(spec.port)

    try:
        Retrying(
            stop=stop_after_delay(spec.start_timeout),
            wait=wait_fixed(0.2),
            retry=retry_if_result(lambda ok: not ok),
        )(ready)
    except RetryError:
        raise start_error(
            spec, f"port {spec.port} not accepting after {spec.start_timeout:.0f}s", paths
        ) from None


def stop(spec: ServiceSpec, paths: Paths = PATHS) -> bool:
    """Stop our process for `spec` if it runs; return whether there was one to stop."""
    pid = our_pid(spec, paths)
    if pid is not None:
        os.kill(pid, spec.stop_signal)
        with suppress(RetryError):  # not down by the deadline: the group kill below ends it
            Retrying(
                stop=stop_after_delay(spec.stop_timeout),
                wait=wait_fixed(0.2),
                retry=retry_if_result(bool),
            )(alive, pid)
        # Also ends helpers left in its group (e.g. a child of a wrapper script).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        # A multi-threaded process shows zombie as soon as its main thread exits, while its
        # other threads still hold the listening socket: a restart must wait for the port.
        with suppress(RetryError):
            Retrying(
                stop=stop_after_delay(spec.stop_timeout),
                wait=wait_fixed(0.1),
                retry=retry_if_result(bool),
            )(port_open, spec.port, 0.2)
    paths.pid(spec.name).unlink(missing_ok=True)
    return pid is not None
