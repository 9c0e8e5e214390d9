"""Helpers for tests: reading .devstack/env and waiting on conditions with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the condition may raise while a service comes back
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition!r}; last error: {last_error!r}"
    )


def stop_service(name: str) -> None:
    """Stop one real service of the local stack by its pid (as an outage would)."""
    from devstack.process import stop
    from devstack.services import specs

    stop(specs()[name])


E2E_OVERLAY = Path(__file__).resolve().parent / "e2e" / "values-e2e.yaml"


def start_stack() -> None:
    """Bring every stopped service back as a user would (`objectflow up`), keeping the runtime
    on the diagram `make test` runs: values.yaml plus the e2e test subscribers."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "devstack.cli", "up", "--values", str(E2E_OVERLAY)]
    subprocess.run(command, check=True)


class EventSink:
    """A real HTTP sink on 127.0.0.1 that records the CloudEvents posted to it (as K_SINK).

    `status` is what it answers (set 503 to play an outage); `refused` counts the posts it
    answered with an error, `events` holds the accepted ones in arrival order.
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cloudevents.http import CloudEvent, from_http

        self.status = 200
        self.refused = 0
        self.events: list[CloudEvent] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    status = sink.status
                    if status < 300:
                        sink.events.append(from_http(dict(self.headers), body))
                    else:
                        sink.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def accepted(self, predicate: Callable[[object], bool] = lambda _e: True) -> list:
        """Accepted events matching `predicate`, once each (by id), in first-arrival order."""
        with self._lock:
            events = list(self.events)
        unique: dict[str, object] = {}
        for event in filter(predicate, events):
            unique.setdefault(event["id"], event)
        return list(unique.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
