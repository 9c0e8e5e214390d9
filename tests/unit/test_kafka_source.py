"""Kafka record -> CloudEvent, as Knative's KafkaSource maps it."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord

from devstack.runtime.kafka_source import header_extension, to_cloudevent


def record(
    value: bytes | None,
    key: bytes | None = b"device-7",
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord:
    return ConsumerRecord(
        topic="device.status",
        partition=4,
        leader_epoch=0,
        offset=17,
        timestamp=1_700_000_000_123,
        timestamp_type=0,
        key=key,
        value=value,
        headers=headers or [],
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        serialized_header_size=-1,
    )


def test_attributes_name_the_source_topic_partition_and_offset() -> None:
    event = to_cloudevent(record(b'{"online": true}'), "objectflow", "devices")
    assert event["type"] == "dev.knative.kafka.event"
    assert event["source"] == "/apis/v1/namespaces/objectflow/kafkasources/devices#device.status"
    assert event["subject"] == "partition:4#17"
    assert event["id"] == "partition:4/offset:17"
    assert event["time"] == "2023-11-14T22:13:20.123000+00:00"
    assert event["key"] == event["partitionkey"] == "device-7"


def test_json_value_becomes_json_data() -> None:
    event = to_cloudevent(record(b'{"online": true}'), "objectflow", "devices")
    assert event["datacontenttype"] == "application/json"
    assert event.data == {"online": True}


def test_other_values_stay_bytes() -> None:
    event = to_cloudevent(record(b"\x00\xffnot json"), "objectflow", "devices")
    assert event["datacontenttype"] == "application/octet-stream"
    assert event.data == b"\x00\xffnot json"


def test_null_key_has_no_key_extension_and_tombstone_no_data() -> None:
    event = to_cloudevent(record(None, key=None), "objectflow", "devices")
    assert "key" not in event
    assert "partitionkey" not in event
    assert event.data is None


def test_headers_become_kafkaheader_extensions_and_content_type_is_datacontenttype() -> None:
    headers = [("X-Trace_ID", b"abc"), ("content-type", b"text/plain")]
    event = to_cloudevent(record(b"hello", headers=headers), "objectflow", "devices")
    assert event["kafkaheaderxtraceid"] == "abc"
    assert event["datacontenttype"] == "text/plain"
    assert event.data == b"hello"
    assert "kafkaheadercontenttype" not in event


def test_header_extension_keeps_only_lowercase_alphanumerics() -> None:
    assert header_extension("Retry-Count.v2") == "kafkaheaderretrycountv2"
