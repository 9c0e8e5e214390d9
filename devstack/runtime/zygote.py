"""A pre-imported parent that forks the runtime's processes, so each skips the shared imports.

Every process of the runtime is `python -m <module> ...` (functions-framework, the MQTT bridge,
the Kafka sources, ...), and each fresh interpreter spent 1-2 s of CPU importing the same
libraries (flask, gunicorn, starlette, pydantic, redis, boto3, ...): about 40 of them made a
start of the runtime take a minute on 2 cores. The supervisor starts this one process first, by
exec (so it inherits no thread or event loop of the supervisor's); it imports those libraries
once, checks that it still runs one thread and holds no socket, then forks a child per request,
which runs its module as `python -m` would (runpy). Only third-party libraries are preloaded:
each child imports the project's code itself, so a restarted child runs the code on disk now.

A child is its own process as before: its own environment (written into its original environ
area too, so /proc/<pid>/environ and `ps e` show it), its command line (`python -m <module>
...`, written over its argv area as setproctitle does, so `ps` and psutil show it), its name
in /proc/<pid>/comm, its log on fds 1 and 2; it gets SIGTERM when the zygote dies, and the
zygote when the supervisor dies, so no child outlives the supervisor; and it stays in the
supervisor's process group. Interpreter options read at startup (PYTHON* variables such as
PYTHONPATH) are the zygote's: the supervisor's environment, which every child shares anyway.

Protocol: the supervisor sends a JSON request (argv after `-m`, env, cwd, name) with the fd for
the child's output over a SOCK_SEQPACKET pair and gets {"pid": ...} back; the zygote reports
each exit as a JSON line {"id": <the request's>, "code": ...} on a second, stream pair.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import gc
import importlib
import itertools
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

# What most processes import; none starts a thread or opens a socket at import (checked below).
PRELOAD = (
    "functions_framework._cli",
    "functions_framework.aio",
    "functions_framework._http.gunicorn",
    "gunicorn.arbiter",
    "gunicorn.workers.gthread",
    "uvicorn_worker",
    "fastapi",
    "pydantic_settings",
    "cloudevents.http",
    "cloudevents.conversion",
    "prometheus_client",
    "redis",
    "redis.asyncio",
    "psycopg2.extras",
    "boto3",
    "botocore.session",
    "kafka",
    "pymongo",
    "pika",
    "paho.mqtt.client",
    "requests",
    "tenacity",
    "croniter",
    "orjson",
    "yaml",
    "pythonjsonlogger.json",
    "pybreaker",
    "filetype",
    "PIL.Image",
    "pydantic.v1",
)
ENVIRON_SPACE = "OBJECTFLOW_ZYGOTE_ENVIRON_SPACE"  # reserves room for a child's environ
ENVIRON_BYTES = 120 * 1024  # one variable may hold at most 128 KiB (MAX_ARG_STRLEN)
TITLE_BYTES = 2048  # room in the argv area for a child's command line
TITLE = "python -m devstack.runtime.zygote (the objectflow runtime's zygote)"
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15  # linux/prctl.h


def dies_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` (or post-fork call) asking Linux to send the child `signum` when the
    process that spawned it dies, however it dies (SIGKILL included), so no child outlives its
    supervisor."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signum)

    return preexec


class ZygoteGone(Exception):
    """The zygote exited; the supervisor starts another."""


@dataclass(frozen=True)
class Child:
    id: int  # the request's number: unlike a pid, never reused
    pid: int
    zygote: Zygote = field(repr=False, compare=False)

    @property
    def running(self) -> bool:
        return not self.zygote.gone and self.id not in self.zygote.codes

    async def wait(self) -> int | None:
        """Its exit code (negative: the signal), None if the zygote ended first."""
        if not self.running:
            return self.zygote.codes.get(self.id)
        waiter = self.zygote.waiters[self.id] = asyncio.get_running_loop().create_future()
        return await waiter


class Zygote:
    """The supervisor's handle: start processes through it and wait for their exits."""

    def __init__(self, env: dict[str, str], cwd: Path, preload: Sequence[str] = PRELOAD) -> None:
        self._requests, requests_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._exits, exits_end = socket.socketpair()
        ends = (requests_end.fileno(), exits_end.fileno())
        arguments = [",".join(preload), "x" * TITLE_BYTES]
        self.process = subprocess.Popen(
            # The last argument only reserves room for a child's command line.
            [sys.executable, "-m", "devstack.runtime.zygote", *map(str, ends), *arguments],
            pass_fds=ends,
            cwd=cwd,
            env={**env, ENVIRON_SPACE: "x" * ENVIRON_BYTES},
            stdin=subprocess.DEVNULL,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
        requests_end.close()
        exits_end.close()
        self._lock = threading.Lock()  # one request at a time (spawn runs in worker threads)
        self._ids = itertools.count(1)
        self.codes: dict[int, int | None] = {}  # child id -> exit code
        self.waiters: dict[int, asyncio.Future[int | None]] = {}
        self.gone = False

    def spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path, output: int, name: str
    ) -> Child:
        """Fork a child running `python -m argv...` with `output` as its stdout and stderr
        (blocking: call it from a thread)."""
        with self._lock:
            id_ = next(self._ids)
            request = {"id": id_, "argv": argv, "env": env, "cwd": str(cwd), "name": name}
            try:
                socket.send_fds(self._requests, [json.dumps(request).encode()], [output])
                reply = self._requests.recv(4096)
            except OSError as exc:
                raise ZygoteGone(str(exc)) from None
        if not reply:
            raise ZygoteGone("the zygote closed its socket")
        return Child(id_, json.loads(reply)["pid"], self)

    async def watch(self) -> None:
        """Read the exit reports until the zygote ends; then every child counts as exited
        (they get SIGTERM as the zygote dies)."""
        reader, writer = await asyncio.open_unix_connection(sock=self._exits)
        try:
            async for line in reader:
                report = json.loads(line)
                self._exited(report["id"], report["code"])
        finally:
            self.gone = True
            for id_ in list(self.waiters):
                self._exited(id_, None)
            writer.close()

    def _exited(self, id_: int, code: int | None) -> None:
        self.codes[id_] = code
        waiter = self.waiters.pop(id_, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(code)

    def close(self) -> None:
        """Stop the zygote: it exits when its request socket closes."""
        self._requests.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the zygote process ------------------------------------------------------------------------


def main(requests: socket.socket, exits: socket.socket, preload: Sequence[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in `make dev`: the supervisor decides
    _set_title(TITLE)
    sockets_before = _sockets()
    for module in preload:
        importlib.import_module(module)
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1 or threading.active_count() != 1:
        raise SystemExit(f"zygote: the preloaded modules started threads ({threads}); not forking")
    if _sockets() != sockets_before:
        raise SystemExit("zygote: the preloaded modules opened sockets; not forking")
    gc.freeze()  # the preloaded objects stay shared: a child's collections do not copy them
    dies_with_zygote = dies_with_parent(signal.SIGTERM)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
    children: dict[int, int] = {}  # pid -> request id
    with selectors.DefaultSelector() as selector:
        selector.register(requests, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is requests:
                    message, fds, _, _ = socket.recv_fds(requests, 1 << 20, 1)
                    if not message:
                        return  # the supervisor is gone
                    request = json.loads(message)
                    pid = os.fork()
                    if pid == 0:  # the child: the zygote's signal plumbing first
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        selector.close()
                        requests.close()
                        exits.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        dies_with_zygote()
                        _child(request, fds[0])
                    for fd in fds:
                        os.close(fd)
                    children[pid] = request["id"]
                    requests.sendall(json.dumps({"pid": pid}).encode())
                else:
                    with contextlib.suppress(BlockingIOError):  # drain the wakeup pipe
                        while os.read(wake_r, 4096):
                            pass
                    _report_exits(exits, children)


def _sockets() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _report_exits(exits: socket.socket, children: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        report = {"id": children.pop(pid, None), "code": code}
        exits.sendall(json.dumps(report).encode() + b"\n")


def _child(request: dict[str, object], output: int) -> NoReturn:
    """Become the requested process: `python -m argv[0] argv[1:]`, then exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(devnull)
        os.close(output)
        name, argv, cwd = str(request["name"]), list(request["argv"]), str(request["cwd"])  # type: ignore[call-overload]
        env: dict[str, str] = request["env"]  # type: ignore[assignment]
        os.chdir(cwd)
        _set_environment(env)
        _set_title(" ".join([sys.executable, "-m", *argv]))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        sys.argv = argv
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        # What the interpreter does at exit: join non-daemon threads, then atexit handlers.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code)


def _areas() -> tuple[int, int, int, int]:
    """Where this process's argv and environ strings lie: arg_start, arg_end, env_start,
    env_end (proc(5) fields 48-51 of /proc/self/stat)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])
    return arg_start, arg_end, env_start, env_end


def _set_title(title: str) -> None:
    """Show `title` as the command line (/proc/<pid>/cmdline, `ps`), as setproctitle does:
    written over the argv area, NUL-terminated, the area's last byte left non-NUL, so Linux
    reads the area as one string up to that NUL (psutil splits it at the spaces)."""
    start, end, _, _ = _areas()
    text = title.encode()[: end - start - 2] + b"\0"
    ctypes.memmove(start, text.ljust(end - start, b" "), end - start)


def _set_environment(env: dict[str, str]) -> None:
    """Replace os.environ with `env`, and write it over the environ area the zygote was
    exec'd with, where /proc/<pid>/environ reads it (as `_set_title` does for argv)."""
    os.environ.clear()
    os.environ.update(env)
    block = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    _, _, start, end = _areas()
    if len(block) >= end - start:
        raise SystemExit(f"zygote: the environment ({len(block)} bytes) exceeds {end - start}")
    ctypes.memmove(start, block.ljust(end - start, b"\0"), end - start)


if __name__ == "__main__":
    main(
        socket.socket(fileno=int(sys.argv[1])),
        socket.socket(fileno=int(sys.argv[2])),
        [module for module in sys.argv[3].split(",") if module],
    )
