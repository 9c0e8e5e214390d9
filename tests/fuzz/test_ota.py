"""A device's MQTT status or heartbeat -> the bridge's Kafka record (payload unchanged, keyed by
the topic's device id) -> the Kafka source's CloudEvent -> HTTP -> ota-status / ota-telemetry's
parsers: every record ends as a status or heartbeat of that device, or is Refused (dead-lettered
with its reason), never an exception the function would answer 5xx for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import event as note
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from devstack import wiring
from devstack.runtime.kafka_source import KAFKA_EVENT, to_cloudevent
from functions.ota import presence, statuses
from functions.ota.dead_letters import Refused
from functions.sources.events import KafkaRecord
from functions.sources.mqtt_bridge import match_route
from functions.sources.mqtt_bridge import to_cloudevent as mqtt_event
from tests.fuzz.wire import Rejected, delivered, json_values, payloads, topic_levels

VALUES = wiring.load()
times = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)


def mutated(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    """`document` with up to two fields replaced by anything (or one added)."""
    for field in draw(st.lists(st.sampled_from([*document, "extra"]), max_size=2, unique=True)):
        document[field] = draw(json_values | times | st.integers(-5, 105))
    return document


@st.composite
def status_documents(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(["downloading", "flashing", "done", "error", "rebooting"]))
    document = {"job_id": draw(st.text(max_size=70)), "message_id": draw(st.text(max_size=130)),
                "status": status, "ts": draw(times)}  # fmt: skip
    if status == "downloading":
        document["progress"] = draw(st.integers(-5, 105))
    return mutated(draw, document)


@st.composite
def heartbeats(draw: st.DrawFn) -> dict[str, Any]:
    document = {"ts": draw(times), "firmware": draw(st.text(max_size=70)),
                "battery": draw(st.floats()), "uptime_s": draw(st.integers(-5, 10**6))}  # fmt: skip
    return mutated(draw, document)


def record_value(kind: str, device: str, payload: bytes) -> tuple[Any, str | None]:
    """The record the bridge produces for `payload` on the device's topic, as the function's
    adapter hands it over: (the value, the device id from the record key)."""
    topic = f"status/{device}/update" if kind == "status" else f"telemetry/{device}"
    route = match_route(VALUES.sources.mqtt_bridge.routes, topic)
    assert route is not None and route.kafka_topic
    key = mqtt_event(route, topic, payload, "mqtt://127.0.0.1:1883", 1).get("partitionkey")
    record = ConsumerRecord(
        topic=route.kafka_topic, partition=0, leader_epoch=0, offset=7, timestamp=1_700_000_000_000,
        timestamp_type=0, key=key.encode() if key else None, value=payload, headers=[],
        checksum=None, serialized_key_size=-1, serialized_value_size=-1, serialized_header_size=-1,
    )  # fmt: skip
    outcome = delivered(to_cloudevent(record, "objectflow", kind), [KAFKA_EVENT], raw_data=True)
    assert not isinstance(outcome, Rejected), outcome  # any record is an event
    value = outcome.data.root if isinstance(outcome.data, KafkaRecord) else outcome.data
    return value, outcome.extensions.get("key")


@given(device=topic_levels, data=st.data())
def test_a_status_record_is_a_status_of_its_device_or_refused(
    device: str, data: st.DataObject
) -> None:
    value, key = record_value("status", device, data.draw(payloads(status_documents())))
    assert key == device
    try:
        status = statuses.parse(value, key)
    except Refused as refused:
        note(f"refused {refused.reason}")
        return
    note(f"a status: {status.status}")
    assert status.status in statuses.RANK and status.job_id and status.message_id
    assert status.progress is None or 0 <= status.progress <= 100


@given(device=topic_levels, data=st.data())
def test_a_heartbeat_record_is_a_heartbeat_of_its_device_or_refused(
    device: str, data: st.DataObject
) -> None:
    value, key = record_value("telemetry", device, data.draw(payloads(heartbeats())))
    assert key == device
    try:
        heartbeat = presence.parse(value, key, max_bytes=4096)
    except Refused as refused:
        note(f"refused {refused.reason}")
        return
    note("a heartbeat")
    received = datetime.now(UTC)
    assert presence.seen_at(heartbeat, received) <= received  # never ahead of its arrival
