"""The local KafkaSource against the real Kafka: ordered, at-least-once, commits after the sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from devstack.process import free_port
from devstack.runtime.kafka_source import consumer_lag
from tests.conftest import ROOT
from tests.support import RecordingSink


def overlay(tmp_path: Path, document: dict[str, object]) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def start(
    module: str,
    args: list[str],
    sink_url: str,
    dead_letter_url: str | None = None,
    metrics: dict[str, int] | None = None,
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "K_SINK": sink_url, **{k: str(v) for k, v in (metrics or {}).items()}}
    if dead_letter_url is not None:
        env["OBJECTFLOW_DEAD_LETTER_SINK"] = dead_letter_url
    command = [sys.executable, "-m", module, *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE)


def terminate(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, expect a clean exit; return the (JSON) log."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as recording:
        yield recording


@pytest.fixture
def topic(service_env: dict[str, str]) -> Iterator[str]:
    name = f"test.kafka-source.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=service_env["KAFKA_BOOTSTRAP_SERVERS"])
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    yield name
    admin.delete_topics([name])
    admin.close()


class Topic:
    """Produce keyed JSON records and read the group's committed offsets."""

    def __init__(self, servers: str, name: str, group: str) -> None:
        self.name, self.group = name, group
        self.producer = KafkaProducer(bootstrap_servers=servers)
        self.admin = KafkaAdminClient(bootstrap_servers=servers)

    def produce(self, key: str, n: int) -> str:
        """Send one record; return the CloudEvent id the source will give it."""
        meta = self.producer.send(self.name, key=key.encode(), value=json.dumps({"n": n}).encode())
        sent = meta.get(timeout=10)
        return f"partition:{sent.partition}/offset:{sent.offset}"

    def committed(self, partition: int) -> int | None:
        offsets = self.admin.list_group_offsets(self.group)[self.group]
        found = offsets.get(TopicPartition(self.name, partition))
        return None if found is None or found.offset < 0 else found.offset

    def close(self) -> None:
        self.producer.close()
        self.admin.close()


def split(event_id: str) -> tuple[int, int]:
    partition, offset = event_id.removeprefix("partition:").split("/offset:")
    return int(partition), int(offset)


def kafka_source(
    env: dict[str, str], topic: str, tmp_path: Path, delivery: dict[str, object] | None = None
) -> tuple[Topic, Path]:
    """A fresh consumer group on `topic` and the values overlay declaring its KafkaSource."""
    group = f"test-src-{uuid.uuid4().hex[:8]}"
    spec: dict[str, object] = {"topics": [topic], "consumer-group": group}
    if delivery:
        spec["delivery"] = delivery
    document = {"sources": {"kafka": {"test-src": spec}}}
    return Topic(env["KAFKA_BOOTSTRAP_SERVERS"], topic, group), overlay(tmp_path, document)


def test_delivers_in_order_commits_after_ack_and_resumes_after_restart(
    service_env: dict[str, str],
    topic: str,
    sink: RecordingSink,
    tmp_path: Path,
    wait_for: Callable[..., object],
) -> None:
    kafka, values = kafka_source(service_env, topic, tmp_path)
    args = ["test-src", "--values", str(values)]
    first = [kafka.produce(f"device-{i % 7}", i) for i in range(30)]
    source = start("devstack.runtime.kafka_source", args, sink.url)
    try:
        # 1. Everything arrives, each partition in offset order, with the Knative shape.
        wait_for(lambda: len(sink.accepted()) >= 30, timeout=60, what="30 records delivered")
        received = [str(e["id"]) for e in sink.accepted()]
        assert sorted(received) == sorted(first)
        for p in range(3):
            offsets = [o for q, o in map(split, received) if q == p]
            assert offsets == sorted(offsets)
        event = sink.accepted()[0]
        assert event["source"] == f"/apis/v1/namespaces/objectflow/kafkasources/test-src#{topic}"
        assert event["key"].startswith("device-")
        assert isinstance(event.data, dict)

        # 2. The sink answers 503 for one record: not committed, retried (within the delivery's
        # retries), nothing overtakes it.
        healthy = False
        sink.answer = lambda e: 202 if healthy or e.data != {"n": 100} else 503
        stuck = kafka.produce("device-0", 100)
        behind = kafka.produce("device-0", 101)  # same key, so same partition, after it
        partition, offset = split(stuck)
        wait_for(lambda: sink.tries(stuck) >= 3, timeout=30, what="the refused record retried")
        assert kafka.committed(partition) == offset
        assert sink.tries(behind) == 0
        healthy = True
        wait_for(lambda: sink.tries(behind) == 1, timeout=30, what="the partition resumed")
        wait_for(lambda: kafka.committed(partition) == offset + 2, what="commit after recovery")
        accepted = [str(e["id"]) for e in sink.accepted()]
        assert accepted.index(stuck) < accepted.index(behind)
        log = terminate(source)
        assert '"message": "sink unavailable, retrying"' in log
    finally:
        if source.poll() is None:
            source.kill()

    # 3. Restart: nothing acknowledged comes again, nothing produced meanwhile is lost.
    before = len(sink.attempts)
    later = [kafka.produce(f"device-{i % 7}", 200 + i) for i in range(9)]
    source = start("devstack.runtime.kafka_source", args, sink.url)
    try:
        wait_for(lambda: len(sink.accepted()) >= 41, timeout=60, what="records after restart")
        after_restart = [str(e["id"]) for e, _ in sink.attempts[before:]]
        assert sorted(after_restart) == sorted(later)
        terminate(source)
    finally:
        if source.poll() is None:
            source.kill()
        kafka.close()


@pytest.fixture
def dead_letters() -> Iterator[RecordingSink]:
    with RecordingSink() as recording:
        yield recording


def test_a_rejected_record_is_dead_lettered_and_committed_past(
    service_env: dict[str, str],
    topic: str,
    sink: RecordingSink,
    dead_letters: RecordingSink,
    tmp_path: Path,
    wait_for: Callable[..., object],
) -> None:
    """EKB: a KafkaSource with a dead-letter sink (the chart renders one) sends a record the
    sink refuses for good there and commits past it."""
    kafka, values = kafka_source(service_env, topic, tmp_path)
    bad, good = kafka.produce("k", 1), kafka.produce("k", 2)
    sink.answer = lambda e: 400 if e["id"] == bad else 202
    args = ["test-src", "--values", str(values)]
    source = start("devstack.runtime.kafka_source", args, sink.url, dead_letters.url)
    try:
        partition, offset = split(good)
        wait_for(lambda: kafka.committed(partition) == offset + 1, what="committed past the 400")
        assert sink.tries(bad) == 1  # never retried
        [letter] = dead_letters.accepted()
        assert letter["id"] == bad
        assert letter["knativeerrorcode"] == "400"
        assert letter["knativeerrordest"] == sink.url
        assert '"message": "sink did not take the record"' in terminate(source)
    finally:
        if source.poll() is None:
            source.kill()
        kafka.close()


def test_an_unavailable_sink_gets_the_delivery_retries_then_the_record_is_dead_lettered(
    service_env: dict[str, str],
    topic: str,
    sink: RecordingSink,
    dead_letters: RecordingSink,
    tmp_path: Path,
    wait_for: Callable[..., object],
) -> None:
    """EKB with `delivery` (retry 2 from PT0.1S, the Kafka dispatcher's delay·2^n): three
    attempts 0.2 s and 0.4 s apart, then the dead-letter sink, and the partition moves on;
    without delivery numbers the stand-in used to retry for ever."""
    delivery = {"retry": 2, "backoff-delay": "PT0.1S"}
    kafka, values = kafka_source(service_env, topic, tmp_path, delivery)
    stuck, behind = kafka.produce("k", 1), kafka.produce("k", 2)
    sink.answer = lambda e: 503 if e["id"] == stuck else 202
    args = ["test-src", "--values", str(values)]
    source = start("devstack.runtime.kafka_source", args, sink.url, dead_letters.url)
    try:
        wait_for(lambda: sink.tries(behind) == 1, timeout=30, what="the partition moved on")
        assert sink.tries(stuck) == 3
        [letter] = dead_letters.accepted()
        assert letter["id"] == stuck and letter["knativeerrordest"] == sink.url
        partition, offset = split(behind)
        wait_for(lambda: kafka.committed(partition) == offset + 1, what="committed past both")
        terminate(source)
    finally:
        if source.poll() is None:
            source.kill()
        kafka.close()


def test_consumer_lag_counts_what_the_group_has_not_committed(
    service_env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    kafka, _ = kafka_source(service_env, topic, tmp_path)
    try:
        ids = [kafka.produce("device-1", n) for n in range(5)]  # one key: one partition
        partition, last = split(ids[-1])
        tp = TopicPartition(topic, partition)
        first = last - 4

        def lag(initial_offset: str) -> dict[TopicPartition, int]:
            return consumer_lag(kafka.admin, kafka.group, [topic], initial_offset)

        # Nothing committed: all five from `earliest`, none from `latest`; other partitions 0.
        assert lag("earliest") == {TopicPartition(topic, p): 5 if p == partition else 0
                                   for p in range(3)}  # fmt: skip
        assert sum(lag("latest").values()) == 0
        group = KafkaConsumer(
            bootstrap_servers=service_env["KAFKA_BOOTSTRAP_SERVERS"],
            group_id=kafka.group,
            enable_auto_commit=False,
        )
        group.assign([tp])
        group.commit({tp: OffsetAndMetadata(first + 3, "", -1)})
        group.close()
        assert lag("earliest")[tp] == lag("latest")[tp] == 2
    finally:
        kafka.close()


def test_with_a_metrics_port_the_source_serves_its_lag(
    service_env: dict[str, str],
    topic: str,
    sink: RecordingSink,
    tmp_path: Path,
    wait_for: Callable[..., object],
) -> None:
    kafka, values = kafka_source(service_env, topic, tmp_path, {"retry": 20})
    for n in range(4):
        kafka.produce("device-2", n)
    sink.answer = lambda e: 503  # nothing is accepted, so nothing is committed
    port = free_port()
    args = ["test-src", "--values", str(values)]
    source = start(
        "devstack.runtime.kafka_source", args, sink.url, metrics={"OBJECTFLOW_METRICS_PORT": port}
    )

    def lag() -> float:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "objectflow_kafka_source_lag"
            and sample.labels["source"] == "test-src"
            and sample.labels["topic"] == topic
        )

    try:
        wait_for(lambda: lag() == 4, timeout=30, what="a lag of 4 records on /metrics")
        terminate(source)
    finally:
        if source.poll() is None:
            source.kill()
        kafka.close()
