"""Helpers for tests: waiting on conditions with a deadline, the stack's clients and services."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def scaled(short: int, full: int) -> int:
    """A load or fault test's size: `short` in `make test`, `full` under `make chaos`
    (`objectflow chaos` sets OBJECTFLOW_TEST_SCALE=full)."""
    import os

    return full if os.environ.get("OBJECTFLOW_TEST_SCALE") == "full" else short


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


def http_app(source: Path | str, target: str) -> Any:
    """A test client of an HTTP function as functions-framework serves it (`--asgi`)."""
    from functions_framework.aio import create_asgi_app
    from starlette.testclient import TestClient

    return TestClient(create_asgi_app(target, str(source), "http"))


def s3_client(env: dict[str, str]) -> Any:
    """boto3 S3 client for the stack's MinIO (as .devstack/env describes it)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["MINIO_ENDPOINT"],
        aws_access_key_id=env["MINIO_ROOT_USER"],
        aws_secret_access_key=env["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
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


class RecordingSink:
    """A real HTTP sink on 127.0.0.1 (use its `url` as K_SINK) recording every delivery attempt.

    It answers `status` (default 202), or whatever `answer(event)` returns when set, so a test
    can play an outage (503) or a rejection (400) for all events or for one.
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cloudevents.http import CloudEvent

        from functions.runtime import cehttp

        self.status = 202
        self.answer: Callable[[CloudEvent], int] = lambda _event: self.status
        self.attempts: list[tuple[CloudEvent, int]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event = cehttp.decode(dict(self.headers), body)
                status = sink.answer(event)
                with sink._lock:
                    sink.attempts.append((event, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> RecordingSink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def accepted(
        self, predicate: Callable[[Any], bool] = lambda _e: True, *, unique: bool = False
    ) -> list[Any]:
        """Accepted events matching `predicate` in arrival order; `unique`: once per id."""
        with self._lock:
            events = [event for event, status in self.attempts if status < 300]
        if not unique:
            return [event for event in events if predicate(event)]
        first: dict[str, Any] = {}
        for event in filter(predicate, events):
            first.setdefault(event["id"], event)
        return list(first.values())

    @property
    def refused(self) -> int:
        with self._lock:
            return sum(1 for _event, status in self.attempts if status >= 300)

    def tries(self, event_id: str) -> int:
        with self._lock:
            return sum(1 for event, _status in self.attempts if event["id"] == event_id)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Prometheus:
    """The HTTP API of the local stack's Prometheus (devstack/prometheus.py)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        """The `data` of a successful answer of GET /api/v1/<path>."""
        import requests

        answer = requests.get(f"{self.url}api/v1/{path}", params=params, timeout=5)
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now: [{"metric": labels, "value": [time, "number"]}]."""
        result: list[dict[str, Any]] = self.get("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one sample of `expr` (e.g. a `sum(...)`), or None when it has none."""
        found = self.query(expr)
        return float(found[0]["value"][1]) if found else None

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts `name` whose labels include `labels`."""
        found: list[dict[str, Any]] = self.get("alerts")["alerts"]
        return [
            alert
            for alert in found
            if alert["labels"]["alertname"] == name and labels.items() <= alert["labels"].items()
        ]

    def targets(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("targets", state="active")["activeTargets"]
        return found
