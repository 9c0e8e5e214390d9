"""Local stand-in for a Knative KafkaSource: Kafka records -> CloudEvents -> K_SINK.

    python -m devstack.runtime.kafka_source <source-name> [--values FILE ...]

One consumer group per source (`consumer-group`). Delivery is at least once and ordered per
partition, as KafkaSource's ordered mode: a record's offset is committed only after the sink
accepted it or it was dead-lettered. As there, a poll's partitions are delivered side by side
(a thread each, one record at a time within a partition), so the rate is not one sink round trip
at a time; the next poll waits for all of them. As the chart's KafkaSource (its `delivery`:
values' `delivery` with the source's overrides, retried with the Kafka dispatcher's backoff), a
record the sink refuses for good, or has not accepted after the last retry, goes to the
dead-letter sink (`OBJECTFLOW_DEAD_LETTER_SINK`) and the partition moves on; when that sink
fails too, the offset is committed anyway, as eventing-kafka-broker's
`OffsetManager.failedToSendToDeadLetterSink` does. The trade-off: a sink outage longer than the
retry window dead-letters records (to re-drive with `objectflow dlq redrive`) instead of holding
the partition.

With `OBJECTFLOW_METRICS_PORT` set it serves Prometheus metrics there, among them the consumer
group's lag on the source's topics, measured by a thread of its own (the delivery loop may sit
in one record's retries for minutes, just when the lag grows).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer
from kafka.admin import OffsetSpec
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import Gauge, start_http_server

from devstack import wiring
from devstack.runtime.sources_common import exit_on_bad_settings
from functions.runtime import logging as json_logging
from functions.runtime import settings
from functions.sources import sink

KAFKA_EVENT = "dev.knative.kafka.event"
CE_HEADER = "ce_"  # the binary Kafka binding of CloudEvents: attribute `id` in header `ce_id`
REQUIRED = ("specversion", "id", "source", "type")
LAG_INTERVAL = 15.0  # seconds between lag measurements
STUCK_EXIT = 75  # the exit status of a source whose poll hung (EX_TEMPFAIL)

log = logging.getLogger("objectflow.kafka_source")

LAG = Gauge(
    "objectflow_kafka_source_lag",
    "Records of a source's topics its consumer group has not committed yet, per partition "
    "(what kafka-consumer-groups.sh --describe shows as LAG), measured every 15 s.",
    ["source", "topic", "partition"],
)


def header_extension(name: str) -> str:
    """Knative's name for a record header: `kafkaheader` + the name lowercased, keeping a-z0-9."""
    return "kafkaheader" + "".join(c for c in name.lower() if c.isascii() and c.isalnum())


def media_type(text: str) -> bool:
    """Whether a `content-type` header can be the event's `datacontenttype` (an HTTP header on
    the way): not empty, printable ASCII only. Any other stays a `kafkaheader*` extension."""
    return bool(text) and all(" " <= c <= "~" for c in text)


def _headers(record: ConsumerRecord) -> list[tuple[str, str]]:
    return [
        (name, raw.decode(errors="replace") if raw is not None else "")
        for name, raw in record.headers or []
    ]


def binary_cloudevent(record: ConsumerRecord) -> CloudEvent | None:
    """The CloudEvent a record carries in the binary Kafka binding (`ce_*` headers, the value
    as data), or None when those headers do not make one."""
    attributes: dict[str, Any] = {}
    for name, text in _headers(record):
        if name.lower().startswith(CE_HEADER):
            attributes[name.lower().removeprefix(CE_HEADER)] = text
        elif name.lower() == "content-type" and media_type(text):
            attributes["datacontenttype"] = text
    if any(not attributes.get(name) for name in REQUIRED) or attributes["specversion"] != "1.0":
        return None
    return CloudEvent(attributes, record.value)


def to_cloudevent(record: ConsumerRecord, namespace: str, source_name: str) -> CloudEvent:
    """The CloudEvent Knative's KafkaSource makes of a record: the record's own in the binary
    Kafka binding, else a `dev.knative.kafka.event` (eventing-kafka-broker
    `InvalidCloudEventInterceptor.validRecord`): `datacontenttype` only from a `content-type`
    header, the value's bytes unchanged, `key`/`partitionkey` only for a non-empty key."""
    carried = binary_cloudevent(record)
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
    if record.key:
        attributes["key"] = attributes["partitionkey"] = record.key.decode(errors="replace")
    for name, text in _headers(record):
        if name.lower() == "content-type" and media_type(text):  # as datacontenttype instead
            attributes["datacontenttype"] = text
        else:
            attributes[header_extension(name)] = text
        if name.lower() == "traceparent":  # the producer's trace, continued by the subscriber
            attributes["traceparent"] = text
    return CloudEvent(attributes, record.value)


class Acknowledged:
    """Next offsets per partition that the sink has acknowledged but Kafka not yet stored."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self._lock = threading.Lock()  # partitions ack and commit from their own threads

    def ack(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        with self._lock:
            self._pending[tp] = OffsetAndMetadata(record.offset + 1, "", -1)

    def commit(self) -> None:
        with self._lock:
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


def consumer_lag(
    admin: KafkaAdminClient, group: str, topics: list[str], initial_offset: str
) -> dict[TopicPartition, int]:
    """Latest offset minus the group's committed one per partition of `topics`. A partition
    the group never committed counts from where it would start (`initial_offset`)."""
    partitions = [
        TopicPartition(topic["name"], partition["partition_index"])
        for topic in admin.describe_topics(topics)
        for partition in topic["partitions"]
    ]
    if not partitions:
        return {}
    latest = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
    start = OffsetSpec.EARLIEST if initial_offset == "earliest" else OffsetSpec.LATEST
    starts = admin.list_partition_offsets(dict.fromkeys(partitions, start))
    committed = admin.list_group_offsets({group: partitions}).get(group, {})
    lag = {}
    for tp in partitions:
        done = committed.get(tp)
        position = done.offset if done is not None and done.offset >= 0 else starts[tp].offset
        lag[tp] = max(0, latest[tp].offset - position)
    return lag


def measure_lag(name: str, spec: wiring.KafkaSource, stop: threading.Event) -> None:
    """Set LAG for the source every LAG_INTERVAL until `stop`; a failed measurement (Kafka
    unreachable) keeps the last figures and is logged."""
    admin: KafkaAdminClient | None = None
    while not stop.is_set():
        try:
            admin = admin or KafkaAdminClient(bootstrap_servers=settings.kafka().servers)
            measured = consumer_lag(admin, spec.consumer_group, spec.topics, spec.initial_offset)
            for tp, records in measured.items():
                LAG.labels(name, tp.topic, str(tp.partition)).set(records)
        except KafkaError as exc:
            log.warning("consumer lag not measured", extra={"error": repr(exc)})
        stop.wait(LAG_INTERVAL)
    if admin is not None:
        admin.close()


class Source:
    """One KafkaSource: polls its topics and delivers each partition's records in order."""

    def __init__(self, name: str, values: wiring.Values, url: str, stop: threading.Event) -> None:
        self.name, self.namespace, self.url, self.stop = name, values.namespace, url, stop
        self.spec = values.sources.kafka[name]
        self.delivery = values.delivery_for(self.spec)
        self.dead_letter = sink.dead_letter_url() if self.delivery.dead_letter else None
        # A partition retries within one poll: keep the consumer in its group meanwhile.
        patience = self.delivery.window("Kafka") + self.delivery.timeout_seconds * (
            self.delivery.retry + 1
        )
        rebalance_s = max(300.0, patience + 60)  # max.poll.interval, also the join's limit
        # kafka-python's default session timeout unless values set one (local-session-timeout-ms)
        timeout = self.spec.local_session_timeout_ms
        self.consumer = KafkaConsumer(
            **({} if timeout is None else {"session_timeout_ms": timeout}),
            bootstrap_servers=settings.kafka().servers,
            client_id=f"{settings.kafka().client_id}-{name}",
            group_id=self.spec.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset=self.spec.initial_offset,
            max_poll_interval_ms=int(rebalance_s * 1000),
        )
        self.acknowledged = Acknowledged(self.consumer)
        # A join waits at most the rebalance timeout (max.poll.interval) for the other members
        self.stuck_after = rebalance_s + 30
        self.polling_since: float | None = None
        self.sessions = sink.Sessions()  # a keep-alive session per delivering thread

    def run(self) -> None:
        # The topics' partitions known before the first join: kafka-python 3.0.12 joined
        # without them, assigned nothing, rejoined as the metadata came and could hang there.
        for topic in self.spec.topics:
            self._wait_for_partitions(topic)
        self.consumer.subscribe(self.spec.topics, listener=CommitOnRevoke(self.acknowledged))
        threading.Thread(target=self._watch_polls, daemon=True).start()
        pool = ThreadPoolExecutor(thread_name_prefix=f"kafka-source-{self.name}")
        try:
            while not self.stop.is_set():
                self.polling_since = time.monotonic()
                try:
                    polled = self.consumer.poll(timeout_ms=500)
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    # kafka-python 3 raises a lost broker out of the group coordinator; the
                    # consumer keeps its place and polls again once the broker is back.
                    log.warning("poll failed; polling again", extra={"error": repr(exc)})
                    self.stop.wait(1.0)
                    continue
                finally:
                    self.polling_since = None
                # the poll's partitions side by side; the next poll waits for all of them
                for done in [pool.submit(self._deliver_partition, tp, records)
                             for tp, records in polled.items()]:  # fmt: skip
                    done.result()
                self.acknowledged.commit()
        finally:
            pool.shutdown()
            self.acknowledged.commit()
            self.consumer.close(autocommit=False)
            self.sessions.close()

    def _wait_for_partitions(self, topic: str, patience: float = 30.0) -> None:
        """Until the topic's partitions are known; a topic still missing after `patience` s
        is subscribed anyway (the group then joins it once it exists)."""
        deadline = time.monotonic() + patience
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if self.consumer.partitions_for_topic(topic):
                    return
            except KafkaError as exc:
                log.warning("no topic metadata yet", extra={"topic": topic, "error": repr(exc)})
            self.stop.wait(1.0)
        log.warning("subscribing without the topic's partitions", extra={"topic": topic})

    def _watch_polls(self) -> None:
        """A poll that never returns (the client stuck rejoining its group) ends the process
        with an error, so the supervisor (or Kubernetes) starts it again: what was delivered and
        not committed is delivered again, at least once as always."""
        while not self.stop.wait(5.0):
            since = self.polling_since
            if since is not None and time.monotonic() - since > self.stuck_after:
                log.error(
                    "poll stuck; exiting to be restarted", extra={"seconds": self.stuck_after}
                )
                os._exit(STUCK_EXIT)

    def _deliver_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        for record in records:
            if self.stop.is_set():
                return  # not acknowledged, so not committed: read again on the next start
            event = to_cloudevent(record, self.namespace, self.name)
            try:
                sink.post_with_retries(
                    self.sessions.get(),
                    self.url,
                    event,
                    source=f"kafka-source/{self.name}",
                    retries=self.delivery.retry,
                    delay=lambda n: self.delivery.delay(n, "Kafka"),
                    timeout=self.delivery.timeout_seconds,
                    stop=self.stop,
                    on_retry=self.acknowledged.commit,
                )
            except (sink.SinkRejected, sink.SinkUnavailable) as exc:
                if self.stop.is_set():
                    # Not acknowledged, so not committed: read again on the next start.
                    return
                self._dead_letter(event, exc)
            self.acknowledged.ack(record)

    def _dead_letter(self, event: CloudEvent, exc: Exception) -> None:
        reason = exc if isinstance(exc, sink.SinkRejected) else sink.SinkRejected(str(exc))
        log.error("sink did not take the record", extra={"id": event["id"], "error": str(exc)})
        if self.dead_letter is None:
            return  # committed past, as Knative without a dead-letter sink
        try:
            sink.post_with_retries(
                self.sessions.get(),
                self.dead_letter,
                sink.dead_letter_event(event, destination=self.url, reason=reason),
                source=f"kafka-source/{self.name}/dead-letter",
                retries=self.delivery.retry,
                delay=lambda n: self.delivery.delay(n, "Kafka"),
                timeout=self.delivery.timeout_seconds,
                stop=self.stop,
            )
        except (sink.SinkRejected, sink.SinkUnavailable) as failed:
            log.error(
                "dead-letter sink failed too; committing past the record, as Knative does",
                extra={"id": event["id"], "error": str(failed)},
            )


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
    port = os.environ.get("OBJECTFLOW_METRICS_PORT")
    if port:
        start_http_server(int(port))
        lag = threading.Thread(target=measure_lag, args=(args.source, source.spec, stop))
        lag.start()
    log.info("kafka source started", extra={"topics": source.spec.topics, "sink": source.url})
    try:
        source.run()
    finally:
        stop.set()  # the lag thread too: a source that failed exits and is restarted
    log.info("kafka source stopped")


if __name__ == "__main__":
    main()
