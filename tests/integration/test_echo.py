"""The echo proof function against the real Redis: reply, duplicates, outage and recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import functions_framework
import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient

from devstack.process import free_port
from functions.echo.function import MESSAGES_KEY, RECEIVED_KEY
from functions.runtime import clients, idempotency, settings
from tests.support import start_stack, stop_service, wait_for

ROOT = Path(__file__).resolve().parents[2]
SOURCE = str(ROOT / "functions" / "echo" / "function.py")


@pytest.fixture
def echo(service_env: dict[str, str]) -> Iterator[FlaskClient]:
    settings.reset()
    clients.reset()
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    yield functions_framework.create_app("echo", SOURCE, "http").test_client()
    clients.reset()


def request(message: str = "hello", event_id: str | None = None) -> CloudEvent:
    attrs = {
        "type": "objectflow.echo.requested.v1",
        "source": "/tests/echo",
        "id": event_id or str(uuid.uuid4()),
    }
    return CloudEvent(attrs, {"message": message})


def received() -> int:
    return int(clients.redis.client().get(RECEIVED_KEY) or 0)


def post(client: FlaskClient, ce: CloudEvent, structured: bool = False):
    headers, body = to_structured(ce) if structured else to_binary(ce)
    return client.post("/", headers=headers, data=body)


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_echo_records_and_replies(echo: FlaskClient, structured: bool) -> None:
    before = received()
    ce = request("hi there")
    response = post(echo, ce, structured)
    assert response.status_code == 200
    assert response.headers["ce-type"] == "objectflow.echo.replied.v1"
    assert response.get_json() == {"message": "hi there", "received": before + 1}
    assert clients.redis.client().hget(MESSAGES_KEY, f"/tests/echo#{ce['id']}") == b"hi there"


def test_duplicate_event_has_one_effect(echo: FlaskClient) -> None:
    ce = request("once")
    before = received()
    assert post(echo, ce).status_code == 200
    assert post(echo, ce).status_code == 204  # the pre-check answers the redelivery
    assert received() == before + 1

    # Even when the fast pre-check misses (key expired, Redis flushed), the domain write holds.
    clients.redis.client().delete(idempotency.key("echo", ce["source"], ce["id"]))
    assert post(echo, ce).status_code == 200
    assert received() == before + 1


def test_bad_event_changes_nothing(echo: FlaskClient) -> None:
    before = received()
    ce = CloudEvent(
        {"type": "objectflow.echo.requested.v1", "source": "/tests/echo", "id": "bad-1"},
        {"message": 7},
    )
    response = post(echo, ce)
    assert response.status_code == 422
    assert response.get_json()["field"] == "message"
    assert received() == before


def test_redis_outage_is_503_then_recovers(echo: FlaskClient) -> None:
    ce = request("during outage")
    before = received()
    stop_service("redis")
    try:
        response = post(echo, ce)
        assert response.status_code == 503
        assert response.get_json()["dependency"] == "redis"
    finally:
        start_stack()
    clients.reset()
    assert wait_for(lambda: clients.redis.client().ping(), timeout=30, what="redis back")
    assert received() == before  # nothing was recorded while it was down
    response = post(echo, ce)  # the broker's retry of the same event
    assert response.status_code == 200
    assert received() == before + 1


def test_served_by_functions_framework_process(service_env: dict[str, str]) -> None:
    """The same code behind the real `functions-framework` server, over HTTP."""
    port = free_port()
    command = [
        sys.executable, "-m", "functions_framework",
        "--source", SOURCE, "--target", "echo", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{base}/health", timeout=1).ok, what="echo to serve")
        headers, body = to_binary(request("over http"))
        response = requests.post(base, headers=headers, data=body, timeout=5)
        assert response.status_code == 200
        assert response.json()["message"] == "over http"
        assert "objectflow_events_total" in requests.get(f"{base}/metrics", timeout=1).text
    finally:
        server.terminate()
        server.wait(timeout=10)
