"""The MinIO webhook adapter as a real functions-framework process, notified by the real MinIO
(the stack's webhook target and bucket notifications from values.yaml) and posting to a real
HTTP sink: decoded keys, authentication, and notifications queued while the adapter is down."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack import wiring
from functions.runtime import clients, settings
from tests.support import RecordingSink, start_stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "functions" / "sources" / "minio_webhook.py"
BUCKET = "thermo-raw"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The port MinIO notifies. The local runtime serves its own adapter there (pointed at the
    broker), so it steps aside during these tests and comes back afterwards."""
    from devstack import process
    from devstack.stack import runtime_spec

    runtime = runtime_spec()
    was_running = process.our_pid(runtime) is not None
    if was_running:
        process.stop(runtime)
    yield wiring.default().ports()["minio-webhook"]
    if was_running:
        start_stack()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    sink = RecordingSink()
    yield sink
    sink.close()


class Adapter:
    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.command = [
            sys.executable, "-m", "functions_framework", "--asgi", "--source", str(SOURCE),
            "--target", "minio_webhook", "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdout=out, stderr=out
            )
        wait_for(self.healthy, timeout=30, what=f"the adapter's /health; log: {self.log}")

    def healthy(self) -> bool:
        return requests.get(f"{self.url}health", timeout=1).ok

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def adapter(
    port: int, service_env: dict[str, str], sink: RecordingSink, tmp_path: Path
) -> Iterator[Adapter]:
    adapter = Adapter(port, {**os.environ, "K_SINK": sink.url}, tmp_path / "adapter.log")
    adapter.start()
    yield adapter
    adapter.stop()


@pytest.fixture
def folder(service_env: dict[str, str]) -> Iterator[str]:
    """A fresh key prefix in the bucket, emptied afterwards (deletes are not notified)."""
    settings.reset()
    clients.reset()
    prefix = f"objectflow-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    listed = clients.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    for obj in listed:
        clients.s3.client().delete_object(Bucket=BUCKET, Key=obj["Key"])
    clients.reset()


def under(folder: str) -> Callable[[Any], bool]:
    return lambda event: str(event["subject"]).startswith(f"{BUCKET}/{folder}/")


def test_upload_becomes_cloudevent_with_decoded_key(
    adapter: Adapter, sink: RecordingSink, folder: str
) -> None:
    key = f"{folder}/dir/with space/ünï.txt"
    clients.s3.client().put_object(
        Bucket=BUCKET, Key=key, Body=b"hello", ContentType="text/plain",
        Metadata={"Camera-Id": "cam-7"},
    )  # fmt: skip
    [event] = wait_for(
        lambda: sink.accepted(under(folder), unique=True), what="the upload's CloudEvent"
    )
    assert event["type"] == "objectflow.s3.object.created.v1"
    assert event["subject"] == f"{BUCKET}/{key}"
    assert event["source"] == f"minio:{BUCKET}"
    data = event.get_data()
    assert (data["bucket"], data["key"], data["size"]) == (BUCKET, key, 5)
    assert data["content_type"] == "text/plain"
    assert data["user_metadata"] == {"camera-id": "cam-7"}
    assert data["event_name"] == "s3:ObjectCreated:Put"


@pytest.mark.parametrize("header", [None, "Bearer not-the-token"], ids=["missing", "wrong"])
def test_wrong_token_is_refused_and_forwards_nothing(
    adapter: Adapter, sink: RecordingSink, header: str | None
) -> None:
    notification = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{BUCKET}/forged",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "eventTime": "2026-01-01T00:00:00Z",
                "s3": {"bucket": {"name": BUCKET}, "object": {"key": "forged", "size": 1}},
            }
        ],
    }
    headers = {"Authorization": header} if header else {}
    response = requests.post(adapter.url, json=notification, headers=headers, timeout=5)
    assert response.status_code == 401
    # The adapter posts before it answers, so had it forwarded anything, it would be here now.
    assert sink.accepted(lambda e: e["subject"] == f"{BUCKET}/forged", unique=True) == []


def test_uploads_while_the_adapter_is_down_arrive_when_it_is_back(
    adapter: Adapter, sink: RecordingSink, folder: str
) -> None:
    adapter.stop()
    keys = [f"{folder}/offline-{i}.bin" for i in range(5)]
    for key in keys:
        clients.s3.client().put_object(Bucket=BUCKET, Key=key, Body=os.urandom(16))

    adapter.start()
    events = wait_for(
        lambda: (
            len(sink.accepted(under(folder), unique=True)) == len(keys)
            and sink.accepted(under(folder), unique=True)
        ),
        timeout=90,
        what="the notifications MinIO queued while the adapter was down",
    )
    assert sorted(e.get_data()["key"] for e in events) == keys


def test_unreadable_notification_is_a_400_kept_as_a_dead_letter(
    service_env: dict[str, str], sink: RecordingSink
) -> None:
    """In-process (the runtime's adapter keeps its port): the reason comes back, the body is
    kept in objectflow.dead_letters once however often MinIO retries, nothing is forwarded."""
    import json

    import psycopg2

    from tests.support import http_app

    os.environ["K_SINK"] = sink.url
    settings.reset()
    clients.reset()
    webhook = http_app(SOURCE, "minio_webhook")
    marker = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {service_env['MINIO_WEBHOOK_TOKEN']}"}
    for body in (json.dumps({"Records": [{"marker": marker}]}).encode(), b"\xff" + marker.encode()):
        for _ in range(2):  # MinIO retrying the same queued notification
            answer = webhook.post("/", content=body, headers=headers)
            assert answer.status_code == 400 and answer.json()["error"] == "bad-notification"
    with psycopg2.connect(service_env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status_code, dead_letter_count, cloudevent FROM objectflow.dead_letters "
            "WHERE cloudevent::text LIKE %s OR cloudevent->>'data_base64' = %s ORDER BY id",
            (f"%{marker}%", base64.b64encode(b"\xff" + marker.encode()).decode()),
        )
        found = cur.fetchall()
    assert [(status, count) for status, count, _ in found] == [(400, 2), (400, 2)]
    assert found[0][2]["type"] == "objectflow.s3.notification.unreadable.v1"
    assert sink.attempts == []
    clients.reset()
