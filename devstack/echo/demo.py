"""The echo step of `objectflow demo`: prove the adapter end to end against the running stack.

Starts the echo function under the real functions-framework server, sends it CloudEvents
(binary and structured mode, a redelivery, a bad event) and prints what happened at each
step, then the function's own metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import requests
import tenacity
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from rich.console import Console
from rich.table import Table

from devstack.process import free_port
from functions.runtime import cehttp

ROOT = Path(__file__).resolve().parents[2]
ORDER = 10  # first: the smallest proof
ECHO_SOURCE = ROOT / "functions" / "echo" / "function.py"


def _echo_event(message: object, event_id: str) -> CloudEvent:
    attributes = {"type": "objectflow.echo.requested.v1", "source": "/demo", "id": event_id}
    return CloudEvent(attributes, {"message": message})


def run(env: dict[str, str], console: Console) -> bool:
    """Run the echo proof; True when every step behaved as expected."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = ROOT / ".devstack" / "logs" / "demo-echo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "functions_framework", "--source", str(ECHO_SOURCE),
        "--target", "echo", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=log)
    try:
        tenacity.retry(
            stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.1), reraise=True
        )(lambda: requests.get(f"{base}/health", timeout=1).raise_for_status())()
        console.print(f"echo is serving on {base} (functions-framework, log: {log_path})")
        return _steps(base, console)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _steps(base: str, console: Console) -> bool:
    event_id = str(uuid.uuid4())
    steps: list[tuple[str, Callable[[], requests.Response], int]] = [
        ("binary-mode CloudEvent", lambda: _post(base, _echo_event("hello", event_id)), 200),
        (
            "structured-mode CloudEvent",
            lambda: _post(base, _echo_event("hi again", str(uuid.uuid4())), structured=True),
            200,
        ),
        ("the same event redelivered", lambda: _post(base, _echo_event("hello", event_id)), 204),
        ("data of the wrong type", lambda: _post(base, _echo_event(42, str(uuid.uuid4()))), 422),
        (
            "not a CloudEvent at all",
            lambda: requests.post(base, json={"message": "hi"}, timeout=5),
            400,
        ),
    ]
    table = Table(title="echo: what happened at each step")
    for column in ("step", "status", "expected", "answer"):
        table.add_column(column)
    ok = True
    for label, send, expected in steps:
        response = send()
        good = response.status_code == expected
        ok &= good
        answer = response.headers.get("ce-type", "") + " " + response.text.strip()
        table.add_row(label, str(response.status_code), str(expected), answer.strip()[:90],
                      style=None if good else "red")  # fmt: skip
    console.print(table)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    for line in metrics.splitlines():
        if line.startswith(("objectflow_events_total", "objectflow_errors_total")):
            console.print(f"  {line}")
    return ok


def _post(base: str, event: CloudEvent, structured: bool = False) -> requests.Response:
    headers, body = to_structured(event) if structured else cehttp.encode(event)
    return requests.post(base, headers=headers, data=body, timeout=5)
