"""Kafka record -> CloudEvent, as Knative's KafkaSource maps it (eventing-kafka-broker
knative-v1.16.1 `InvalidCloudEventInterceptor.validRecord`; binary Kafka binding)."""

from __future__ import annotations

import threading

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import GroupAuthorizationFailedError, KafkaConnectionError

from devstack import wiring
from devstack.runtime import kafka_source
from devstack.runtime.kafka_source import Source, header_extension, to_cloudevent


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


@pytest.mark.parametrize("value", [b'{"online":  true}', b"\x00\xffnot json"])
def test_values_keep_their_bytes_and_get_no_guessed_content_type(value: bytes) -> None:
    event = to_cloudevent(record(value), "objectflow", "devices")
    assert "datacontenttype" not in event
    assert event.data == value


@pytest.mark.parametrize("key", [None, b""])
def test_null_or_empty_key_has_no_key_extension_and_tombstone_no_data(key: bytes | None) -> None:
    event = to_cloudevent(record(None, key=key), "objectflow", "devices")
    assert "key" not in event
    assert "partitionkey" not in event
    assert event.data is None


CE_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"order-1"),
    ("ce_source", b"/shop"),
    ("ce_type", b"shop.order.v1"),
    ("ce_subject", b"cart-9"),
    ("content-type", b"application/json"),
]


def test_a_record_in_the_binary_kafka_binding_is_its_cloudevent() -> None:
    event = to_cloudevent(record(b'{"n": 1}', headers=CE_HEADERS), "objectflow", "devices")
    assert (event["id"], event["source"], event["type"]) == ("order-1", "/shop", "shop.order.v1")
    assert event["subject"] == "cart-9"
    assert event["datacontenttype"] == "application/json"
    assert event.data == b'{"n": 1}'


def test_incomplete_ce_headers_leave_a_plain_record() -> None:
    headers = [h for h in CE_HEADERS if h[0] != "ce_id"]
    event = to_cloudevent(record(b"{}", headers=headers), "objectflow", "devices")
    assert event["type"] == "dev.knative.kafka.event"
    assert event["kafkaheadercetype"] == "shop.order.v1"


def test_headers_become_kafkaheader_extensions_and_content_type_is_datacontenttype() -> None:
    headers = [("X-Trace_ID", b"abc"), ("content-type", b"text/plain")]
    event = to_cloudevent(record(b"hello", headers=headers), "objectflow", "devices")
    assert event["kafkaheaderxtraceid"] == "abc"
    assert event["datacontenttype"] == "text/plain"
    assert event.data == b"hello"
    assert "kafkaheadercontenttype" not in event


@pytest.mark.parametrize(
    "content_type", [b"", b"text/plain\r\nX-Injected: 1", "bild/\u00fc".encode()]
)
def test_a_content_type_that_is_no_header_value_stays_a_kafkaheader_extension(
    content_type: bytes,
) -> None:
    """Found by tests/fuzz: such a datacontenttype could not travel as an HTTP header."""
    event = to_cloudevent(record(b"x", headers=[("content-type", content_type)]), "o", "d")
    assert "datacontenttype" not in event
    assert event["kafkaheadercontenttype"] == content_type.decode()


def test_header_extension_keeps_only_lowercase_alphanumerics() -> None:
    assert header_extension("Retry-Count.v2") == "kafkaheaderretrycountv2"


class _Stop:
    """A stop event whose waits return at once, `rounds` times, then stop the loop."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def wait(self, _timeout: float) -> bool:
        self.rounds -= 1
        return self.rounds < 0


@pytest.mark.parametrize(("polling_for", "exits"), [(None, False), (10.0, False), (400.0, True)])
def test_a_poll_hung_past_the_rebalance_timeout_ends_the_process(
    monkeypatch: pytest.MonkeyPatch, polling_for: float | None, exits: bool
) -> None:
    """The watchdog of kafka-python's hang (a poll stuck rejoining): the supervisor restarts
    the source. A poll under way for less, or no poll under way, is left alone."""
    import time
    from types import SimpleNamespace

    from devstack.runtime import kafka_source

    exited: list[int] = []
    monkeypatch.setattr(kafka_source.os, "_exit", exited.append)
    since = None if polling_for is None else time.monotonic() - polling_for
    source = SimpleNamespace(stop=_Stop(rounds=1), polling_since=since, stuck_after=330.0)
    kafka_source.Source._watch_polls(source)  # type: ignore[arg-type]
    assert exited == ([kafka_source.STUCK_EXIT] if exits else [])


class _Consumer:
    """A consumer whose polls raise `errors` in turn, then stop the source."""

    def __init__(self, errors: list[Exception], stop: threading.Event) -> None:
        self.errors, self.stop, self.polls, self.closed = errors, stop, 0, False

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def subscribe(self, _topics: list[str], listener: object) -> None:
        pass

    def poll(self, timeout_ms: int) -> dict[object, list[ConsumerRecord]]:
        self.polls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.stop.set()
        return {}

    def commit(self, _offsets: object) -> None:
        pass

    def close(self, autocommit: bool) -> None:
        self.closed = True


def _source(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> Source:
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/")
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda _timeout: stop.is_set())  # no backoff sleeps
    monkeypatch.setattr(kafka_source, "KafkaConsumer", lambda **_: _Consumer(errors, stop))
    values = wiring.load()
    return Source(next(iter(values.sources.kafka)), values, "http://127.0.0.1:9/", stop)


def test_a_lost_broker_during_a_poll_is_polled_through() -> None:
    """kafka-python 3 raises a lost connection out of `poll` (the group coordinator): the source
    polls again rather than end its loop (a dead loop left the process up, delivering nothing)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        source = _source(monkeypatch, [KafkaConnectionError("111 ECONNREFUSED")] * 2)
        source.run()
    consumer = source.consumer
    assert consumer.polls == 3 and consumer.closed  # type: ignore[attr-defined]
    assert source.polling_since is None


def test_an_error_a_retry_cannot_mend_ends_the_loop() -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        source = _source(monkeypatch, [GroupAuthorizationFailedError("objectflow")])
        with pytest.raises(GroupAuthorizationFailedError):
            source.run()
    assert source.consumer.closed  # type: ignore[attr-defined]
