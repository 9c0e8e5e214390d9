"""The MQTT bridge as a real process between the real Mosquitto and a real HTTP sink:
mapping, sink outage, bridge restart (persistent session) and broker restart."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cloudevents.http import CloudEvent

from devstack.process import free_port
from functions.runtime import clients, settings, tracing
from tests.support import RecordingSink, start_stack, stop_service, wait_for

ROOT = Path(__file__).resolve().parents[2]
TYPE = "objectflow.test.reading.received.v1"


class BridgeProcess:
    """`python -m functions.sources.mqtt_bridge`, restartable, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        before = self.log_text().count('"subscribed"')
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "functions.sources.mqtt_bridge"],
                env=self.env, cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip
        self.wait_subscribed(before)

    def wait_subscribed(self, before: int) -> None:
        """Until the broker acknowledged the subscription (SUBACK) once more than `before`."""
        wait_for(
            lambda: self.log_text().count('"subscribed"') > before,
            timeout=30,
            what=f"the bridge to subscribe; log:\n{self.log_text()[-2000:]}",
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    sink = RecordingSink()
    yield sink
    sink.close()


@pytest.fixture
def prefix() -> str:
    return f"objectflow-test/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bridge(
    service_env: dict[str, str], sink: RecordingSink, prefix: str, tmp_path: Path
) -> Iterator[BridgeProcess]:
    client_id = f"objectflow-test-bridge-{uuid.uuid4().hex[:8]}"
    routes = [{"topic": f"{prefix}/+/reading", "type": TYPE, "subject-segment": 2}]
    env = {
        **os.environ,
        "K_SINK": sink.url,
        "OBJECTFLOW_MQTT_ROUTES": json.dumps(routes),
        "OBJECTFLOW_MQTT_CLIENT_ID": client_id,
        "OBJECTFLOW_MQTT_MAX_BACKOFF": "1",  # retry the sink often, so the test is quick
        "OBJECTFLOW_METRICS_PORT": str(free_port()),
    }
    process = BridgeProcess(env, tmp_path / "bridge.log")
    process.start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        assert process.stop() == 0, "the bridge should exit cleanly on SIGTERM"
    # Drop the persistent session this test left in Mosquitto.
    settings.reset()
    clients.mqtt.connect(client_id, clean_start=True).disconnect()


class Publisher:
    """Publishes numbered readings at QoS 1 under the test's topic prefix."""

    def __init__(self, prefix: str) -> None:
        settings.reset()
        self.prefix = prefix
        self.mqtt = clients.mqtt.Publisher(clients.mqtt.connect())

    def __call__(self, device: str, seq: int) -> None:
        payload = json.dumps({"device": device, "seq": seq, "run": self.prefix}).encode()
        self.mqtt.publish(f"{self.prefix}/{device}/reading", payload, qos=1)

    def close(self) -> None:
        self.mqtt.client.loop_stop()
        self.mqtt.client.disconnect()


@pytest.fixture
def publish(service_env: dict[str, str], prefix: str) -> Iterator[Publisher]:
    publisher = Publisher(prefix)
    yield publisher
    publisher.close()


def metric(bridge: BridgeProcess, name: str) -> float:
    port = bridge.env["OBJECTFLOW_METRICS_PORT"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def seqs(sink: RecordingSink, device: str) -> list[int]:
    return [
        e.get_data()["seq"] for e in sink.accepted(lambda e: e["subject"] == device, unique=True)
    ]


def test_each_message_becomes_one_cloudevent(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher, prefix: str
) -> None:
    for seq in range(20):
        publish(f"dev-{seq % 4}", seq)
    events = wait_for(
        lambda: len(sink.accepted(unique=True)) == 20 and sink.accepted(unique=True),
        what="20 events",
    )
    assert {e["type"] for e in events} == {TYPE}
    assert {e["subject"] for e in events} == {"dev-0", "dev-1", "dev-2", "dev-3"}
    assert all(e["source"].endswith(f"/{prefix}/{e['subject']}/reading") for e in events)
    assert all(e.get_data()["device"] == e["subject"] for e in events)
    assert seqs(sink, "dev-1") == [1, 5, 9, 13, 17]  # one topic keeps its order


def test_posts_of_different_keys_overlap_while_each_key_keeps_its_order(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher
) -> None:
    """The lanes: a slow sink is posted to for several devices at once, never twice at once for
    one device (its topic is its key here), and each device's events arrive in order."""
    lock = threading.Lock()
    active: Counter[str] = Counter()
    peak, peak_per_device = 0, 0

    def slow(event: CloudEvent) -> int:
        nonlocal peak, peak_per_device
        with lock:
            active[event["subject"]] += 1
            peak = max(peak, sum(active.values()))
            peak_per_device = max(peak_per_device, active[event["subject"]])
        time.sleep(0.05)
        with lock:
            active[event["subject"]] -= 1
        return 202

    sink.answer = slow
    for seq in range(48):
        publish(f"dev-{seq % 8}", seq)
    wait_for(lambda: len(sink.accepted(unique=True)) == 48, timeout=60, what="48 events")
    assert peak > 1, "posts of different devices should overlap"
    assert peak_per_device == 1, "one device's posts must go one at a time"
    for device in range(8):
        assert seqs(sink, f"dev-{device}") == list(range(device, 48, 8))


def test_messages_published_during_a_sink_outage_arrive_after_it(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher
) -> None:
    sink.status = 503
    for seq in range(30):
        publish("dev-a" if seq % 2 else "dev-b", seq)
    wait_for(lambda: sink.refused >= 5, what="the bridge to retry the sink")
    assert sink.accepted(unique=True) == []

    sink.status = 202
    wait_for(
        lambda: len(sink.accepted(unique=True)) == 30,
        timeout=60,
        what="all 30 events after recovery",
    )
    assert seqs(sink, "dev-a") == list(range(1, 30, 2))
    assert seqs(sink, "dev-b") == list(range(0, 30, 2))
    assert metric(bridge, "objectflow_source_sink_retries_total") >= 5
    assert metric(bridge, 'objectflow_source_messages_total{outcome="forwarded"') >= 30


def test_bridge_killed_during_an_outage_loses_nothing(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher
) -> None:
    sink.status = 503
    for seq in range(10):
        publish("dev-k", seq)
    wait_for(lambda: sink.refused >= 1, what="the bridge to try the sink")
    assert bridge.stop(signal.SIGKILL) == -signal.SIGKILL  # nothing acked, no goodbye
    for seq in range(10, 20):
        publish("dev-k", seq)  # queued by Mosquitto in the bridge's persistent session

    sink.status = 202
    bridge.start()
    wait_for(
        lambda: len(sink.accepted(unique=True)) == 20,
        timeout=60,
        what="all 20 events after restart",
    )
    assert sorted(seqs(sink, "dev-k")) == list(range(20))


def test_bridge_reconnects_after_mosquitto_restarts(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher, prefix: str
) -> None:
    publish("dev-r", 0)
    wait_for(lambda: len(sink.accepted(unique=True)) == 1, what="the first event")
    subscribed = bridge.log_text().count('"subscribed"')

    stop_service("mosquitto")
    start_stack()
    bridge.wait_subscribed(subscribed)  # reconnected and subscribed again

    later = Publisher(prefix)
    try:
        for seq in range(1, 6):
            later("dev-r", seq)
    finally:
        later.close()
    wait_for(
        lambda: len(sink.accepted(unique=True)) == 6, timeout=60, what="events after the restart"
    )
    assert seqs(sink, "dev-r") == list(range(6))


def test_a_kafka_route_produces_each_payload_unchanged_keyed_by_its_segment(
    service_env: dict[str, str], sink: RecordingSink, prefix: str, tmp_path: Path
) -> None:
    """The OTA status route's shape: straight to Kafka, nothing posted to the sink, the payload
    as it came (even when it is not JSON), the partition segment as the record key."""
    from kafka import KafkaConsumer

    topic = f"bridge-test-{uuid.uuid4().hex[:8]}"
    client_id = f"objectflow-test-bridge-{uuid.uuid4().hex[:8]}"
    routes = [{"topic": f"{prefix}/+/update", "type": TYPE, "partition-segment": 2,
               "kafka-topic": topic}]  # fmt: skip
    env = {**os.environ, "K_SINK": sink.url, "OBJECTFLOW_MQTT_ROUTES": json.dumps(routes),
           "OBJECTFLOW_MQTT_CLIENT_ID": client_id}  # fmt: skip
    process = BridgeProcess(env, tmp_path / "bridge.log")
    process.start()
    publisher = clients.mqtt.Publisher(clients.mqtt.connect())
    consumer = KafkaConsumer(topic, bootstrap_servers=service_env["KAFKA_BOOTSTRAP_SERVERS"],
                             auto_offset_reset="earliest", consumer_timeout_ms=500)  # fmt: skip
    try:
        sent = {"d1": [b'{"n": 1}', b"not json"], "d2": [b'{"n": 2}']}
        for device, payloads in sent.items():
            for payload in payloads:
                publisher.publish(f"{prefix}/{device}/update", payload, qos=1)
        got: list[tuple[bytes, bytes]] = []
        wait_for(lambda: got.extend((r.key, r.value) for r in consumer) or len(got) >= 3,
                 timeout=30, what="3 records on the route's topic")  # fmt: skip
        by_key = {key.decode(): [v for k, v in got if k == key] for key, _ in got}
        assert by_key == sent
        assert sink.accepted() == []
    finally:
        consumer.close()
        publisher.client.loop_stop()
        publisher.client.disconnect()
        assert process.stop() == 0
        settings.reset()
        clients.mqtt.connect(client_id, clean_start=True).disconnect()
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=service_env["KAFKA_BOOTSTRAP_SERVERS"])
        admin.delete_topics([topic])
        admin.close()


def test_a_devices_trace_is_continued_and_a_message_without_one_starts_one(
    bridge: BridgeProcess, sink: RecordingSink, publish: Publisher
) -> None:
    trace = secrets.token_hex(16)
    with tracing.span("device", parent=f"00-{trace}-{secrets.token_hex(8)}-01"):
        publish("dev-traced", 0)  # carried as the MQTT 5 `traceparent` user property
    publish("dev-untraced", 1)
    events = wait_for(
        lambda: len(sink.accepted(unique=True)) == 2 and sink.accepted(unique=True),
        what="2 events",
    )
    traces = {e["subject"]: e["traceparent"].split("-")[1] for e in events}
    assert traces["dev-traced"] == trace
    assert traces["dev-untraced"] != trace
