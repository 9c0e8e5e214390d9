"""ota-status in-process against the real PostgreSQL, Redis and Kafka: statuses applied in
order and once, late and impossible ones recorded and ignored, every dead-letter reason in
device.status.dlq, job.completed once, the device's firmware, and a replay changing nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from functions.runtime import clients, migrate
from tests.ota_support import JobEvents, sql, unique

ROOT = Path(__file__).resolve().parents[3]
SOURCE = "/apis/v1/namespaces/objectflow/kafkasources/ota-device-status#device.status"
TOPICS = {"device.status": 6, "device.status.dlq": 1}


def ensure_topics(env: dict[str, str], topics: dict[str, int] = TOPICS) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in admin.list_topics()]
        if missing:
            admin.create_topics(missing)
    finally:
        admin.close()


@pytest.fixture
def status_app(ota_env: dict[str, str]) -> Iterator[FlaskClient]:
    migrate.apply()
    ensure_topics(ota_env)
    source = str(ROOT / "functions" / "ota" / "status.py")
    yield functions_framework.create_app("ota_status", source, "http").test_client()
    clients.reset()


@pytest.fixture
def dlq(ota_env: dict[str, str], status_app: FlaskClient) -> Iterator[JobEvents]:
    reader = JobEvents(ota_env, topic="device.status.dlq")
    yield reader
    reader.close()


@pytest.fixture
def job(
    api: Any, firmware: str, device: Callable[..., str], ota_env: dict[str, str]
) -> Callable[..., tuple[str, str]]:
    """(job id, device id) of a new job in `status`: due tomorrow, so the running scheduler
    leaves it alone, then put in the state by SQL (standing in for the dispatcher)."""

    def make(status: str = "dispatched", device_id: str | None = None) -> tuple[str, str]:
        device_id = device_id or device()
        due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        response = api.post(
            "/jobs",
            json={"device_id": device_id, "firmware_version": firmware, "schedule_time": due},
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        if status != "scheduled":
            sql(ota_env, "UPDATE ota.jobs SET status = %s, version = version + 1 WHERE id = %s",
                (status, job_id))  # fmt: skip
        return job_id, device_id

    return make


def status(job_id: str, kind: str, message_id: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "message_id": message_id, "status": kind,
            "ts": datetime.now(UTC).isoformat(), **extra}  # fmt: skip


def post(app: FlaskClient, device_id: str | None, value: Any) -> int:
    """Deliver one device.status record as the Kafka source does; the HTTP status."""
    attributes = {"type": "dev.knative.kafka.event", "source": SOURCE,
                  "id": f"partition:0/offset:{uuid.uuid4().int % 10**12}"}  # fmt: skip
    if device_id is not None:
        attributes["key"] = attributes["partitionkey"] = device_id
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    headers, body = to_binary(CloudEvent(attributes, data))
    if not isinstance(value, bytes):
        headers["content-type"] = "application/json"
    return app.post("/", headers=headers, data=body).status_code


def job_row(env: dict[str, str], job_id: str) -> tuple[Any, ...]:
    return sql(env, "SELECT status, version, status_reason FROM ota.jobs WHERE id = %s",
               (job_id,))[0]  # fmt: skip


def history(env: dict[str, str], job_id: str) -> list[tuple[str, str]]:
    """(type, detail status) of the job's status rows and completions, in order."""
    rows = sql(
        env,
        "SELECT type, detail->>'status' FROM ota.job_events WHERE job_id = %s "
        "AND (type LIKE 'status.%%' OR type = 'job.completed') ORDER BY id",
        (job_id,),
    )
    return [(kind, detail) for kind, detail in rows]  # fmt: skip


def completions(env: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    rows = sql(env, "SELECT payload FROM ota.event_outbox WHERE aggregate_id = %s "
               "AND event_type = 'job.completed'", (job_id,))  # fmt: skip
    return [row[0] for row in rows]


def firmware_of(env: dict[str, str], device_id: str) -> str | None:
    return sql(env, "SELECT current_firmware FROM ota.devices WHERE device_id = %s",
               (device_id,))[0][0]  # fmt: skip


def test_statuses_apply_in_order_and_done_completes_the_job(
    status_app: FlaskClient, job: Callable[..., tuple[str, str]], firmware: str,
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    job_id, device_id = job()
    _, version = job_row(ota_env, job_id)[:2]
    assert post(status_app, device_id, status(job_id, "downloading", progress=10)) == 204
    assert job_row(ota_env, job_id)[:2] == ("downloading", version + 1)
    assert post(status_app, device_id, status(job_id, "downloading", progress=60)) == 204
    assert post(status_app, device_id, status(job_id, "flashing")) == 204
    assert firmware_of(ota_env, device_id) is None
    assert post(status_app, device_id, status(job_id, "done")) == 204

    assert job_row(ota_env, job_id)[:2] == ("done", version + 3)
    assert history(ota_env, job_id) == [
        ("status.applied", "downloading"),  # the second (same job, message, status) is a
        ("status.applied", "flashing"),  # duplicate the Redis fast path dropped
        ("status.applied", "done"),
        ("job.completed", "done"),
    ]
    [completed] = completions(ota_env, job_id)
    assert (completed["type"], completed["outcome"], completed["status"]) == (
        "job.completed", "done", "done",
    )  # fmt: skip
    assert firmware_of(ota_env, device_id) == firmware


def test_error_completes_the_job_with_its_reason_and_keeps_the_firmware(
    status_app: FlaskClient, job: Callable[..., tuple[str, str]], ota_env: dict[str, str]
) -> None:
    job_id, device_id = job()
    assert post(status_app, device_id, status(job_id, "downloading")) == 204
    assert post(status_app, device_id, status(job_id, "error", error="sha256 mismatch")) == 204
    assert job_row(ota_env, job_id)[::2] == ("error", "sha256 mismatch")
    [completed] = completions(ota_env, job_id)
    assert completed["outcome"] == "error"
    assert firmware_of(ota_env, device_id) is None


def test_a_lost_status_is_skipped_forward_and_late_ones_never_go_backwards(
    status_app: FlaskClient, job: Callable[..., tuple[str, str]], ota_env: dict[str, str]
) -> None:
    job_id, device_id = job()
    assert post(status_app, device_id, status(job_id, "flashing")) == 204  # downloading lost
    assert post(status_app, device_id, status(job_id, "downloading")) == 204  # reordered: late
    assert job_row(ota_env, job_id)[0] == "flashing"
    assert post(status_app, device_id, status(job_id, "done")) == 204
    assert post(status_app, device_id, status(job_id, "error", error="too late")) == 204
    assert post(status_app, device_id, status(job_id, "flashing", message_id="m2")) == 204
    assert job_row(ota_env, job_id)[0] == "done"
    assert history(ota_env, job_id) == [
        ("status.applied", "flashing"),
        ("status.late", "downloading"),
        ("status.applied", "done"),
        ("job.completed", "done"),
        ("status.impossible", "error"),  # the job is done: an error cannot also be true
        ("status.late", "flashing"),
    ]
    assert len(completions(ota_env, job_id)) == 1


def test_statuses_of_a_job_not_yet_dispatched_are_impossible(
    status_app: FlaskClient, job: Callable[..., tuple[str, str]], ota_env: dict[str, str]
) -> None:
    job_id, device_id = job("ready")
    before = job_row(ota_env, job_id)
    assert post(status_app, device_id, status(job_id, "downloading")) == 204
    assert job_row(ota_env, job_id) == before
    assert history(ota_env, job_id) == [("status.impossible", "downloading")]


def test_replaying_the_same_statuses_changes_nothing(
    status_app: FlaskClient, job: Callable[..., tuple[str, str]], ota_env: dict[str, str]
) -> None:
    job_id, device_id = job()
    sent = [status(job_id, kind) for kind in ("downloading", "flashing", "done")]
    for value in sent:
        assert post(status_app, device_id, value) == 204
    before = (job_row(ota_env, job_id), history(ota_env, job_id), completions(ota_env, job_id))

    for value in sent:  # the Redis fast path answers: PostgreSQL is not even read
        assert post(status_app, device_id, value) == 204
    assert (job_row(ota_env, job_id), history(ota_env, job_id)) == before[:2]

    keys = [f"ota:status:{job_id}:m1:{kind}" for kind in ("downloading", "flashing", "done")]
    assert clients.redis.client().delete(*keys) == 3  # the fast path lost: PostgreSQL decides
    for value in sent:
        assert post(status_app, device_id, value) == 204
    assert job_row(ota_env, job_id) == before[0]
    assert completions(ota_env, job_id) == before[2]
    assert [kind for kind, _ in history(ota_env, job_id)[len(before[1]) :]] == [
        "status.duplicate"
    ] * 3


@pytest.mark.parametrize(
    "reason", ["not-json", "invalid", "no-device", "unknown-job", "wrong-device",
               "unknown-status", "never-dispatched"],
)  # fmt: skip
def test_records_that_can_never_apply_go_to_the_dlq_with_their_reason(
    reason: str,
    status_app: FlaskClient,
    dlq: JobEvents,
    job: Callable[..., tuple[str, str]],
    device: Callable[..., str],
    ota_env: dict[str, str],
) -> None:
    job_id, device_id = job("scheduled" if reason == "never-dispatched" else "dispatched")
    key: str | None = device_id
    value: Any = status(job_id, "downloading", message_id=unique("msg"))
    if reason == "not-json":
        value = b"\xff{not json"
    elif reason == "invalid":
        del value["ts"]
    elif reason == "no-device":
        key = None
    elif reason == "unknown-job":
        value["job_id"] = str(uuid.uuid4())
    elif reason == "wrong-device":
        key = device()
    elif reason == "unknown-status":
        value["status"] = "rebooting"
    else:
        value["status"] = "done"
    before = job_row(ota_env, job_id)
    refused = {"reason": reason}
    counted = REGISTRY.get_sample_value("objectflow_ota_status_dead_letters_total", refused) or 0

    assert post(status_app, key, value) == 204  # acknowledged: the record is in the DLQ
    after = REGISTRY.get_sample_value("objectflow_ota_status_dead_letters_total", refused)
    assert after == counted + 1

    def mine() -> list[Any]:
        if key is not None:
            return [r for r in dlq.poll() if r.key == key]
        return [r for r in dlq.poll() if not r.key and value["message_id"] in r.value["payload"]]

    from tests.support import wait_for

    wait_for(lambda: mine(), timeout=15, what=f"a {reason} record in device.status.dlq")
    [letter] = mine()
    assert letter.value["reason"] == reason
    assert letter.headers["reason"] == reason
    assert letter.value["detail"]
    assert letter.value["origin"].startswith("device.status/partition:0/offset:")
    if reason == "not-json":
        assert letter.value["payload_encoding"] == "base64"
    else:
        assert json.loads(letter.value["payload"]) == value
    assert job_row(ota_env, job_id) == before
    assert history(ota_env, job_id) == []
    assert sql(ota_env, "SELECT count(*) FROM ota.device_statuses WHERE job_id = %s",
               (job_id,)) == [(0,)]  # fmt: skip
