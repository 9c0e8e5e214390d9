"""Real sources through the running runtime: MQTT publish, S3 PUT, Kafka produce, cron ticks."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaProducer

from tests.support import E2E_OVERLAY, s3_client, wait_for

Deliveries = Callable[..., list[dict[str, Any]]]


def mine(
    deliveries: Deliveries, predicate: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    return [d for d in deliveries("e2e-sources") if predicate(d)]


def test_mqtt_messages_arrive_as_cloudevents(
    stack_env: dict[str, str], deliveries: Deliveries
) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    client.connect("127.0.0.1", int(stack_env["MQTT_BROKER_URL"].rsplit(":", 1)[1]))
    client.loop_start()
    try:
        for seq in range(10):
            client.publish(
                f"e2e/{device}/events", json.dumps({"seq": seq}), qos=1
            ).wait_for_publish(5)
        client.publish(f"e2e/{device}/events", json.dumps({"seq": 0}), qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()

    def received() -> list[dict[str, Any]]:
        return mine(deliveries, lambda d: d["subject"] == device)

    events = wait_for(lambda: len(received()) == 11 and received(), what="11 MQTT events")
    assert {e["type"] for e in events} == {"objectflow.test.mqtt.v1"}
    assert [e["data"]["seq"] for e in events] == [*range(10), 0]  # in order per topic
    # A re-published payload is a new MQTT message, so a new event (docs/camera.md, duplicates);
    # only a resend of the same message (same packet id) shares an id.
    assert len({e["id"] for e in events}) == 11


def test_s3_put_produces_a_cloudevent_with_the_decoded_key(
    stack_env: dict[str, str], deliveries: Deliveries
) -> None:
    key = f"e2e/{uuid.uuid4().hex[:8]}/with space ü.txt"
    s3 = s3_client(stack_env)
    s3.put_object(Bucket="thermo-raw", Key=key, Body=b"hello", Metadata={"device-uid": "cam-9"})
    [event] = wait_for(
        lambda: mine(deliveries, lambda d: d["subject"] == f"thermo-raw/{key}"), what="the S3 event"
    )
    assert event["type"] == "objectflow.s3.object.created.v1"
    assert event["data"]["key"] == key
    assert event["data"]["size"] == 5
    assert event["data"]["user_metadata"] == {"device-uid": "cam-9"}


def test_kafka_records_arrive_in_partition_order(
    stack_env: dict[str, str], deliveries: Deliveries
) -> None:
    run = uuid.uuid4().hex[:8]
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"])
    for n in range(30):
        key = f"{run}-{n % 5}".encode()
        producer.send("e2e.events", key=key, value=json.dumps({"run": run, "n": n}).encode())
    producer.flush()
    producer.close()

    def received() -> list[dict[str, Any]]:
        return mine(
            deliveries, lambda d: isinstance(d["data"], dict) and d["data"].get("run") == run
        )

    events = wait_for(lambda: len(received()) == 30 and received(), timeout=60, what="30 records")
    by_key: dict[str, list[tuple[int, int]]] = {}
    for event in events:
        offset = int(event["subject"].split("#")[1])
        by_key.setdefault(event["extensions"]["key"], []).append((offset, event["data"]["n"]))
    assert set(by_key) == {f"{run}-{i}" for i in range(5)}
    for records in by_key.values():  # a key lives in one partition: its records stay in order
        assert records == sorted(records)
        assert [n for _offset, n in records] == sorted(n for _offset, n in records)


def test_schedule_fires_on_time_in_its_time_zone_and_by_hand(deliveries: Deliveries) -> None:
    def ticks() -> list[dict[str, Any]]:
        return mine(deliveries, lambda d: d["type"] == "dev.knative.sources.ping")

    before = len(ticks())
    tick = wait_for(lambda: ticks()[before:], timeout=20, what="a scheduled tick")[0]
    sent = datetime.fromisoformat(tick["time"]).timestamp()  # PingSource: the send time
    assert sent % 5 < 1  # fired at its 5-second occurrence
    assert 0 <= tick["at"] - sent < 3  # delivered right after
    assert tick["data"] == {"from": "e2e"}

    command = [
        sys.executable,
        "-m",
        "devstack.cli",
        "tick",
        "e2e-ticks",
        "--values",
        str(E2E_OVERLAY),
    ]
    fired = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    event_id = fired.strip().splitlines()[-1]  # `tick` prints the id of the event it sent
    wait_for(lambda: any(t["id"] == event_id for t in ticks()), what="the tick fired by hand")
