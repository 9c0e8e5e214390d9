"""Source adapters without servers: MQTT message and MinIO record -> CloudEvent, the webhook's
authentication and input checks."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from functions.runtime.errors import ObjectflowError, SettingsError
from functions.sources import minio_webhook, mqtt_bridge
from functions.sources.minio_webhook import Notification
from functions.sources.routes import MqttRoute
from tests.support import http_app

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK = str(ROOT / "functions" / "sources" / "minio_webhook.py")
ORIGIN = "mqtt://127.0.0.1:1883"
CHUNK = MqttRoute(topic="camera/+/image_json", type="objectflow.camera.chunk.received.v1",
                  subject_segment=1)  # fmt: skip
STATUS = MqttRoute(topic="devices/#", type="objectflow.device.status.received.v1")


# --- MQTT bridge ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("camera/cam-7/image_json", CHUNK),
        ("camera/cam-7/other", None),
        ("camera/a/b/image_json", None),  # + is exactly one level
        ("devices/d1/status", STATUS),  # # is any number of levels
        ("devices", STATUS),  # ... including none
        ("other/topic", None),
    ],
)
def test_route_matching_with_wildcards(topic: str, expected: MqttRoute | None) -> None:
    assert mqtt_bridge.match_route([CHUNK, STATUS], topic) == expected


def test_json_message_becomes_cloudevent_with_subject_from_topic_level() -> None:
    payload = json.dumps({"id": "cam-7", "index": 0, "total": 2, "data": "aGk="}).encode()
    event = mqtt_bridge.to_cloudevent(CHUNK, "camera/cam-7/image_json", payload, ORIGIN, 1)
    assert event["type"] == "objectflow.camera.chunk.received.v1"
    assert event["subject"] == "cam-7"
    assert event["source"] == "mqtt://127.0.0.1:1883/camera/cam-7/image_json"
    assert event["datacontenttype"] == "application/json"
    assert event.get_data() == {"id": "cam-7", "index": 0, "total": 2, "data": "aGk="}
    version, trace_id, span_id, flags = event["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")


def test_binary_message_keeps_raw_bytes_and_has_no_subject_without_segment() -> None:
    payload = b"\xff\xd8\xff\xe0 not json"
    event = mqtt_bridge.to_cloudevent(STATUS, "devices/d1", payload, ORIGIN, 1)
    assert event["datacontenttype"] == "application/octet-stream"
    assert event.get_data() == payload
    assert "subject" not in event.get_attributes()


def test_a_partition_segment_becomes_the_partitionkey() -> None:
    """eventing-kafka-broker `PartitionKeyExtensionInterceptor`: `partitionkey` is the record
    key, so one camera's chunks share a partition (and an ordered trigger's order)."""
    keyed = CHUNK.model_copy(update={"partition_segment": 1})
    event = mqtt_bridge.to_cloudevent(keyed, "camera/cam-7/image_json", b"{}", ORIGIN, 1)
    assert event["partitionkey"] == "cam-7"
    plain = mqtt_bridge.to_cloudevent(CHUNK, "camera/cam-7/image_json", b"{}", ORIGIN, 1)
    assert "partitionkey" not in plain.get_attributes()


def test_message_id_tells_a_redelivery_from_a_new_message() -> None:
    first = mqtt_bridge.to_cloudevent(CHUNK, "camera/a/image_json", b"{}", ORIGIN, 7)
    again = mqtt_bridge.to_cloudevent(CHUNK, "camera/a/image_json", b"{}", ORIGIN, 7)  # DUP
    later = mqtt_bridge.to_cloudevent(CHUNK, "camera/a/image_json", b"{}", ORIGIN, 8)  # new
    other_topic = mqtt_bridge.to_cloudevent(CHUNK, "camera/b/image_json", b"{}", ORIGIN, 7)
    assert first["id"] == again["id"] and len(first["id"]) == 32
    assert first["traceparent"] != again["traceparent"]  # a new trace per delivery
    assert later["id"] != first["id"] and other_topic["id"] != first["id"]
    assert mqtt_bridge.message_id("a", b"b/c", 1) != mqtt_bridge.message_id("a/b", b"c", 1)


def test_routes_are_read_from_kebab_case_json() -> None:
    os.environ["OBJECTFLOW_MQTT_ROUTES"] = json.dumps(
        [{"topic": "camera/+/image_json", "type": CHUNK.type, "subject-segment": 1}]
    )
    assert mqtt_bridge.load_settings().routes == [CHUNK]


@pytest.mark.parametrize("raw", ["not json", "[]", '[{"topic": "t", "type": "Bad Type"}]'])
def test_bad_routes_name_the_variable(raw: str) -> None:
    os.environ["OBJECTFLOW_MQTT_ROUTES"] = raw
    with pytest.raises(SettingsError) as caught:
        mqtt_bridge.load_settings()
    assert caught.value.setting == "OBJECTFLOW_MQTT_ROUTES"


# --- MinIO webhook -----------------------------------------------------------------------------

TOKEN = "unit-test-token"
RECORD: dict[str, Any] = {
    "eventVersion": "2.0",
    "eventSource": "minio:s3",
    "eventTime": "2026-01-02T03:04:05.678Z",
    "eventName": "s3:ObjectCreated:Put",
    "s3": {
        "bucket": {"name": "thermo-raw", "arn": "arn:aws:s3:::thermo-raw"},
        "object": {
            "key": "dir%2Fwith+space%2F%C3%BCn%C3%AF.txt",
            "size": 5,
            "eTag": "5d41402abc4b2a76b9719d911017c592",
            "contentType": "text/plain",
            "userMetadata": {"content-type": "text/plain", "X-Amz-Meta-Camera-Id": "cam-7"},
            "versionId": "",
            "sequencer": "1872A1B2C3D4E5F6",
        },
    },
}


def record(**changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(RECORD)
    changed.update({k: v for k, v in changes.items() if k != "object"})
    changed["s3"]["object"].update(changes.get("object", {}))
    return changed


def event_for(raw: dict[str, Any]) -> Any:
    parsed = Notification.model_validate({"Records": [raw]}).records[0]
    return minio_webhook.to_cloudevent(parsed)


def test_created_record_becomes_cloudevent_with_decoded_key() -> None:
    event = event_for(RECORD)
    assert event["type"] == "objectflow.s3.object.created.v1"
    assert event["subject"] == "thermo-raw/dir/with space/ünï.txt"
    assert event["source"] == "minio:thermo-raw"
    assert event["time"] == "2026-01-02T03:04:05.678000Z"
    assert event.get_data() == {
        "bucket": "thermo-raw",
        "key": "dir/with space/ünï.txt",
        "size": 5,
        "etag": "5d41402abc4b2a76b9719d911017c592",
        "content_type": "text/plain",
        "user_metadata": {"camera-id": "cam-7"},
        "version_id": "",
        "sequencer": "1872A1B2C3D4E5F6",
        "event_name": "s3:ObjectCreated:Put",
        "event_time": "2026-01-02T03:04:05.678000Z",
    }


def test_removed_record_and_other_events() -> None:
    removed = event_for(
        record(eventName="s3:ObjectRemoved:Delete", object={"size": None, "userMetadata": {}})
    )
    assert removed["type"] == "objectflow.s3.object.removed.v1"
    assert removed.get_data()["size"] is None
    assert event_for(record(eventName="s3:ObjectAccessed:Get")) is None


def test_record_id_is_stable_per_object_version_and_sequencer() -> None:
    assert event_for(RECORD)["id"] == event_for(copy.deepcopy(RECORD))["id"]
    assert len(event_for(RECORD)["id"]) == 32
    for changed in ({"sequencer": "1872A1B2C3D4E5F7"}, {"versionId": "v2"}, {"key": "other"}):
        assert event_for(record(object=changed))["id"] != event_for(RECORD)["id"]


@pytest.fixture
def webhook() -> TestClient:
    os.environ.update(MINIO_WEBHOOK_TOKEN=TOKEN, K_SINK="http://127.0.0.1:9/unreachable")
    return http_app(WEBHOOK, "minio_webhook")


def notification(*records: dict[str, Any]) -> dict[str, Any]:
    return {"EventName": "s3:ObjectCreated:Put", "Key": "thermo-raw/x", "Records": list(records)}


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN, "Bearer"], ids=repr
)
def test_webhook_rejects_missing_or_wrong_token(webhook: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = webhook.post("/", json=notification(RECORD), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (json.dumps({"EventName": "s3:ObjectCreated:Put"}).encode(), "Records"),
        (json.dumps(notification(record(eventTime="yesterday"))).encode(), "Records.0.eventTime"),
        (
            json.dumps(notification(record(object={"key": "+", "size": -1}))).encode(),
            "Records.0.s3.object.size",
        ),
    ],
)
def test_malformed_notifications_are_400s_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(minio_webhook.BadNotification) as caught:
        minio_webhook.to_cloudevents(body)
    assert caught.value.status == 400 and caught.value.field == field, caught.value.detail


def test_a_record_without_size_is_an_empty_object() -> None:
    empty = record()
    del empty["s3"]["object"]["size"]  # what MinIO sends for a zero-byte object
    [event], skipped = minio_webhook.to_cloudevents(json.dumps(notification(empty)).encode())
    assert event.get_data()["size"] == 0 and skipped == 0


JUNK: list[Any] = [None, "", "x" * 5000, -1, 0, 2**70, 1.5, float("inf"), True, [], {}, [1],
                   {"a": 1}, "\x00\n%0A", "ünï/../..", "2026-13-45T99:99", "+", "%"]  # fmt: skip


def _mutate(value: Any, rng: random.Random) -> Any:
    """`value` with one random part replaced by junk, removed or duplicated."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        changed = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del changed[key]
        elif roll < 0.5:
            changed[key] = rng.choice(JUNK)
        else:
            changed[key] = _mutate(value[key], rng)
        return changed
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return [*value[:index], _mutate(value[index], rng), *value[index + 1 :]] * rng.randint(1, 2)
    return rng.choice(JUNK)


def test_no_notification_body_makes_the_adapter_answer_a_5xx() -> None:
    """Fuzz: thousands of malformed notifications (values swapped for junk, fields dropped,
    bytes flipped or cut) are each forwarded or refused with a 4xx, never an unexpected error
    (which the HTTP frame would answer 500, and MinIO would retry forever)."""
    rng = random.Random(10)
    base = notification(RECORD)
    outcomes = {"forwarded": 0, "refused": 0}
    for _ in range(3000):
        body = json.dumps(_mutate(base, rng), allow_nan=True).encode()
        if rng.random() < 0.3:  # byte-level damage too
            cut = bytearray(body[: rng.randrange(1, len(body) + 1)])
            for _ in range(rng.randint(0, 3)):
                cut[rng.randrange(len(cut))] = rng.randrange(256)
            body = bytes(cut)
        try:
            minio_webhook.to_cloudevents(body)
        except ObjectflowError as exc:
            assert 400 <= exc.status < 500, exc.detail
            outcomes["refused"] += 1
        else:
            outcomes["forwarded"] += 1
    assert min(outcomes.values()) > 100, outcomes  # both paths were exercised


def test_webhook_answers_503_when_the_sink_is_down(webhook: TestClient) -> None:
    response = webhook.post(
        "/", json=notification(RECORD), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 503  # MinIO keeps the notification queued and retries


def test_webhook_health_and_metrics(webhook: TestClient) -> None:
    assert webhook.get("/health").json()["status"] == "ok"
    assert b"objectflow_source_messages_total" in webhook.get("/metrics").content
