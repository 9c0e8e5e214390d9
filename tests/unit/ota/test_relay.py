"""The relay's pure parts: waves keep a device's order, outages are told from bad records,
job.dlq records carry the error, the id and a bounded payload."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError

from functions.ota.outbox import Row
from functions.ota.relay import dlq_record, headers, is_outage, waves


def row(n: int, device: str, payload: dict[str, object] | None = None) -> Row:
    return Row(
        n,
        str(uuid.uuid4()),
        f"job-{n}",
        device,
        "job.created",
        payload or {"n": n},
        0,
        datetime.now(UTC),
    )


def test_waves_hold_one_row_per_device_in_order() -> None:
    rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "c"), row(5, "a"), row(6, "b")]
    assert [[r.id for r in wave] for wave in waves(rows)] == [[1, 2, 4], [3, 6], [5]]
    assert list(waves([])) == []


def test_connection_trouble_is_an_outage_and_a_bad_record_is_not() -> None:
    assert is_outage(KafkaTimeoutError())
    assert is_outage(NotLeaderForPartitionError())
    assert not is_outage(MessageSizeTooLargeError("2000000 bytes"))


def test_a_dlq_record_names_the_event_and_truncates_the_payload() -> None:
    poison = row(7, "d", {"blob": "x" * 10_000})
    body = json.loads(dlq_record(poison, "MessageSizeTooLargeError: too big", keep_bytes=100))
    assert body["event_id"] == poison.event_id and body["outbox_id"] == 7
    assert body["error"].startswith("MessageSizeTooLargeError")
    assert body["payload_truncated"] is True and len(body["payload"]) == 100
    assert body["payload_bytes"] == len(poison.value())


def test_headers_follow_the_cloudevents_kafka_binding() -> None:
    found = dict(headers(row(1, "dev-9"), "/objectflow/ota"))
    assert found["ce_specversion"] == b"1.0"
    assert found["ce_type"] == b"objectflow.ota.job.created.v1"
    assert found["ce_subject"] == b"job-1" and found["ce_partitionkey"] == b"dev-9"
    assert found["content-type"] == b"application/json"
