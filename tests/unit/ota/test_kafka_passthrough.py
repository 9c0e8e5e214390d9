"""The relay's records reach a KafkaSource consumer as the CloudEvents they carry: the local
Kafka source passes records with CloudEvents headers through, as Knative's KafkaSource does."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from kafka.consumer.fetcher import ConsumerRecord

from devstack.runtime.kafka_source import binary_cloudevent, to_cloudevent
from functions.ota import relay
from functions.ota.outbox import Row


def consumed(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord(
        topic="job.events",
        partition=2,
        leader_epoch=0,
        offset=9,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"dev-1",
        value=value,
        headers=headers,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        serialized_header_size=-1,
    )


def test_a_relay_record_arrives_as_its_own_cloudevent() -> None:
    event_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    payload = {
        "event_id": event_id,
        "type": "job.created",
        "job_id": job_id,
        "occurred_at": "2025-03-30T01:00:00Z",
    }
    row = Row(1, event_id, job_id, "dev-1", "job.created", payload, 0, datetime.now(UTC))
    record = consumed(row.value(), relay.headers(row, "/objectflow/ota"))
    event = to_cloudevent(record, "objectflow", "ota-job-events")
    assert event["specversion"] == "1.0"
    assert event["id"] == event_id
    assert event["type"] == "objectflow.ota.job.created.v1"
    assert event["source"] == "/objectflow/ota"
    assert event["subject"] == job_id
    assert event["partitionkey"] == "dev-1"
    assert event["time"] == "2025-03-30T01:00:00Z"
    assert event["datacontenttype"] == "application/json"
    assert json.loads(event.data) == payload  # the value's bytes, unchanged


def test_records_without_cloudevents_headers_are_still_wrapped() -> None:
    record = consumed(json.dumps({"a": 1}).encode(), [("trace", b"x")])
    assert binary_cloudevent(record) is None
    event = to_cloudevent(record, "objectflow", "ota-job-events")
    assert event["type"] == "dev.knative.kafka.event"
    assert event["kafkaheadertrace"] == "x"
