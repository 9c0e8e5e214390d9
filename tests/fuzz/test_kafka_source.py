"""A Kafka record -> the local KafkaSource's CloudEvent -> HTTP (the broker forwards a body
unchanged) -> a function: any record, whatever its key, value and headers, is one event that
arrives with its bytes and its id, source and key as Knative's KafkaSource gives them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from devstack.runtime.kafka_source import KAFKA_EVENT, to_cloudevent
from functions.runtime import cehttp
from tests.fuzz.wire import Rejected, delivered, json_bytes, json_values

known_headers = ["content-type", "traceparent", "ce_specversion", "ce_id", "ce_source", "ce_type",
                 "ce_subject"]  # fmt: skip
header_names = st.sampled_from(known_headers) | st.text(max_size=12)
header_values = st.sampled_from([b"1.0", b"application/json", b"/shop", b""]) | st.binary(
    max_size=40
)


@given(
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=200) | json_bytes(json_values),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
)
def test_any_record_arrives_as_one_event_with_its_bytes(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], partition: int,
    offset: int,
) -> None:  # fmt: skip
    record = ConsumerRecord(
        topic="device.status", partition=partition, leader_epoch=0, offset=offset,
        timestamp=1_700_000_000_000, timestamp_type=0, key=key, value=value, headers=headers,
        checksum=None, serialized_key_size=-1, serialized_value_size=-1, serialized_header_size=-1,
    )  # fmt: skip
    event = to_cloudevent(record, "objectflow", "fuzz")
    # the broker's hop: the body forwarded as it came
    headers_out, body = cehttp.encode(event)
    forwarded = cehttp.decode(headers_out, body, raw_data=True)
    assert forwarded.get_attributes() == event.get_attributes()
    assert (forwarded.get_data() or None) == (event.get_data() or None)
    # a function reading Kafka records (raw_data, as ota-status): the record's event, or a 400
    # for a record carrying a CloudEvent of another type
    outcome = delivered(event, [KAFKA_EVENT], raw_data=True)
    if event["type"] == KAFKA_EVENT:
        assert not isinstance(outcome, Rejected), outcome
        assert outcome.id == event["id"] and outcome.extensions.get("key") == event.get("key")
    else:
        assert isinstance(outcome, Rejected) and outcome.status == 400
