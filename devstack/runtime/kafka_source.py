"""Local stand-in for a Knative KafkaSource: Kafka records -> CloudEvents -> K_SINK.

    python -m devstack.runtime.kafka_source <source-name> [--values FILE ...]

One consumer group per source (`consumer-group`). Delivery is at least once and ordered per
partition, as KafkaSource's ordered mode: a record's offset is committed only after the sink
accepted it, and the partition does not move on while the sink is unavailable.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from cloudevents.http import CloudEvent
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from devstack import wiring
from devstack.runtime.sources_common import exit_on_bad_settings
from functions.runtime import logging as json_logging
from functions.runtime import settings
from functions.sources import sink

KAFKA_EVENT = "dev.knative.kafka.event"
# How long one partition retries an unavailable sink before the consumer polls again. Well below
# max.poll.interval.ms (300 s), so a long outage never gets this consumer evicted from its group.
RETRY_WINDOW = 60.0

log = logging.getLogger("objectflow.kafka_source")


def header_extension(name: str) -> str:
    """Knative's name for a record header: `kafkaheader` + the name lowercased, keeping a-z0-9."""
    return "kafkaheader" + "".join(c for c in name.lower() if c.isascii() and c.isalnum())


def _payload(value: bytes | None, declared: str | None) -> tuple[str | None, Any]:
    """(datacontenttype, data): JSON when the value parses as JSON, else the raw bytes."""
    if value is None or (declared and "json" not in declared):
        return declared, value
    try:
        return declared or "application/json", json.loads(value)
    except ValueError:  # includes UnicodeDecodeError
        return declared or "application/octet-stream", value


def carried_cloudevent(record: ConsumerRecord) -> CloudEvent | None:
    """The CloudEvent a record carries in the Kafka protocol binding's binary mode (a
    `ce_specversion` header), which KafkaSource passes through as it is; None for any other
    record. Headers `ce_<name>` are its attributes, `content-type` its datacontenttype."""
    found = {name.lower(): raw for name, raw in record.headers or [] if raw is not None}
    if "ce_specversion" not in found:
        return None
    attributes: dict[str, Any] = {
        name.removeprefix("ce_"): raw.decode(errors="replace")
        for name, raw in found.items()
        if name.startswith("ce_")
    }
    declared = found["content-type"].decode(errors="replace") if "content-type" in found else None
    content_type, data = _payload(record.value, declared)
    if content_type:
        attributes["datacontenttype"] = content_type
    return CloudEvent(attributes, data)


def to_cloudevent(record: ConsumerRecord, namespace: str, source_name: str) -> CloudEvent:
    """The CloudEvent Knative's KafkaSource makes of a record: the one it carries, if any,
    else a `dev.knative.kafka.event` around it (eventing-kafka-broker,
    InvalidCloudEventInterceptor)."""
    carried = carried_cloudevent(record)
    if carried is not None:
        return carried
    p, o = record.partition, record.offset
    attributes: dict[str, Any] = {
        "type": KAFKA_EVENT,
        "source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source_name}#{record.topic}",
        "subject": f"partition:{p}#{o}",
        "id": f"partition:{p}/offset:{o}",
        "time": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(),
    }
    if record.key is not None:
        attributes["key"] = attributes["partitionkey"] = record.key.decode(errors="replace")
    declared = None
    for name, raw in record.headers or []:
        text = raw.decode(errors="replace") if raw is not None else ""
        if name.lower() == "content-type":  # carried as datacontenttype instead
            declared = text.lower()
        else:
            attributes[header_extension(name)] = text
    content_type, data = _payload(record.value, declared)
    if content_type:
        attributes["datacontenttype"] = content_type
    return CloudEvent(attributes, data)


class Acknowledged:
    """Next offsets per partition that the sink has acknowledged but Kafka not yet stored."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._pending: dict[TopicPartition, OffsetAndMetadata] = {}

    def ack(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._pending[tp] = OffsetAndMetadata(record.offset + 1, "", -1)

    def commit(self) -> None:
        if not self._pending:
            return
        try:
            self._consumer.commit(dict(self._pending))
        except KafkaError as exc:  # e.g. a rebalance took the partition: it is redelivered
            log.warning("offset commit failed", extra={"error": repr(exc)})
        self._pending.clear()


class CommitOnRevoke(ConsumerRebalanceListener):
    """Store acknowledged offsets before a partition moves to another consumer."""

    def __init__(self, acknowledged: Acknowledged) -> None:
        self._acknowledged = acknowledged

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._acknowledged.commit()

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [str(tp) for tp in assigned]})


class Source:
    """One KafkaSource: polls its topics and delivers each partition's records in order."""

    def __init__(self, name: str, values: wiring.Values, url: str, stop: threading.Event) -> None:
        self.name, self.namespace, self.url, self.stop = name, values.namespace, url, stop
        self.spec = values.sources.kafka[name]
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka().servers,
            client_id=f"{settings.kafka().client_id}-{name}",
            group_id=self.spec.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset=self.spec.initial_offset,
        )
        self.acknowledged = Acknowledged(self.consumer)
        self.session = requests.Session()

    def run(self) -> None:
        self.consumer.subscribe(self.spec.topics, listener=CommitOnRevoke(self.acknowledged))
        try:
            while not self.stop.is_set():
                for tp, records in self.consumer.poll(timeout_ms=500).items():
                    self._deliver_partition(tp, records)
                self.acknowledged.commit()
        finally:
            self.acknowledged.commit()
            self.consumer.close(autocommit=False)
            self.session.close()

    def _deliver_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        for record in records:
            if self.stop.is_set():
                return  # not acknowledged, so not committed: read again on the next start
            event = to_cloudevent(record, self.namespace, self.name)
            try:
                sink.post_until_accepted(
                    self.session,
                    self.url,
                    event,
                    source=f"kafka-source/{self.name}",
                    within=RETRY_WINDOW,
                    stop=self.stop,
                    on_retry=self.acknowledged.commit,
                )
            except sink.SinkRejected as exc:
                # It can never be delivered. Knative would dead-letter it (delivery.deadLetterSink);
                # the local source logs it and commits past it so the partition is not blocked.
                log.error("sink rejected record", extra={"id": event["id"], "error": str(exc)})
            except sink.SinkUnavailable as exc:
                # Rewind so the next poll returns this record again; the rest of the batch for
                # this partition is dropped, which keeps the partition in order.
                log.warning("sink still unavailable", extra={"id": event["id"], "error": str(exc)})
                self.consumer.seek(tp, record.offset)
                return
            self.acknowledged.ack(record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.runtime.kafka_source")
    parser.add_argument("source", help="a key of `sources.kafka` in values.yaml")
    parser.add_argument("--values", action="append", type=Path, default=[], help="overlay")
    args = parser.parse_args(argv)
    with exit_on_bad_settings(parser.prog):
        values = wiring.load(*args.values)
        url = sink.sink_url()
    if args.source not in values.sources.kafka:
        declared = ", ".join(values.sources.kafka) or "none"
        parser.error(f"no Kafka source {args.source!r} in the wiring (declared: {declared})")
    json_logging.configure(f"kafka-source/{args.source}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    source = Source(args.source, values, url, stop)
    log.info("kafka source started", extra={"topics": source.spec.topics, "sink": source.url})
    source.run()
    log.info("kafka source stopped")


if __name__ == "__main__":
    main()
