"""Knative parity, rule by rule, through the running local runtime.

Each test names the Knative source it follows, at the tags objectflow pins: knative/eventing
`knative-v1.16.3` (the MT channel-based broker, "MT") and knative-extensions/eventing-kafka-broker
`knative-v1.16.1` (the Kafka broker and KafkaSource, "EKB"). Re-check them when Knative is
upgraded; docs/architecture.md ("Knative parity") has the same rules as a table.

The runtime's own broker has values' class (MTChannelBasedBroker); a rule of the Kafka class runs
through a second local broker of that class (`class_broker`), in front of the same running
functions and dead-letter store.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg2
import pytest
import requests
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from kafka import KafkaProducer

from devstack import wiring
from devstack.camera import sim as camera_sim
from devstack.config import PATHS, read_env_file
from devstack.runtime import broker as broker_module
from functions.runtime import cehttp
from tests.conftest import ROOT
from tests.support import wait_for

Deliveries = Callable[..., list[dict[str, Any]]]
PARITY = "objectflow.parity.retried.v1"  # trigger e2e-retried: retry 3, exponential PT0.1S
LINEAR = "objectflow.parity.linear.v1"  # trigger e2e-linear: retry 3, linear PT0.3S
MIB = 1024 * 1024


def event(type_: str, data: dict[str, Any] | None = None, **attrs: str) -> CloudEvent:
    return CloudEvent(
        {"type": type_, "source": "/e2e/parity", "id": str(uuid.uuid4()), **attrs}, data or {}
    )


def post(url: str, ce: CloudEvent) -> requests.Response:
    headers, body = cehttp.encode(ce)
    return requests.post(url, headers=headers, data=body, timeout=10)


def letters(event_id: str, trigger: str | None = None) -> list[dict[str, Any]]:
    """Rows of the dead-letter store for one event id (and trigger)."""
    with psycopg2.connect(read_env_file(PATHS)["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT destination, status_code, response_body, attempts, trigger_name, cloudevent"
            " FROM objectflow.dead_letters WHERE event_id = %s ORDER BY id",
            (event_id,),
        )
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return [r for r in rows if trigger is None or r["trigger_name"] == trigger]


def gaps(deliveries: list[dict[str, Any]]) -> list[float]:
    return [b["at"] - a["at"] for a, b in itertools.pairwise(deliveries)]


def attempts_of(
    deliveries: Deliveries, function: str, event_id: str, n: int
) -> list[dict[str, Any]]:
    return wait_for(
        lambda: len(deliveries(function, event_id)) >= n and deliveries(function, event_id),
        what=f"{n} deliveries to {function}",
    )


def route_to(
    values: wiring.Values, function: str, trigger: str, type_: str, **delivery: Any
) -> broker_module.Route:
    """A route of `type_` to a running function (or any URL), under a trigger name of its own."""
    url = (
        function if function.startswith("http") else f"http://127.0.0.1:{values.ports()[function]}/"
    )
    return broker_module.Route(
        wiring.Trigger(name=trigger, filters=[wiring.Filter(exact={"type": type_})]),
        function,
        url,
        values.delivery.model_copy(update=delivery),
    )


def counted(trigger: str, outcome: str) -> float:
    """This process's broker counter (the `class_broker`s run in the test process)."""
    return broker_module.DELIVERIES.labels(trigger, outcome)._value.get()


# --- retries ----------------------------------------------------------------------------------


def test_404_then_409_then_200_is_delivered_three_times(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """MT: pkg/kncloudevents/retries.go `SelectiveRetry`; EKB:
    `WebClientCloudEventSender.isRetryableStatusCode`: 404, 408, 409, 429 and 5xx are retried."""
    ce = event(PARITY, {"fail": [404, 409]})
    assert send(ce).status_code == 202
    got = attempts_of(deliveries, "e2e-parity", ce["id"], 3)
    assert [d["attempt"] for d in got] == [1, 2, 3]
    assert letters(ce["id"]) == []


def test_mt_linear_backoff_retries_at_once_then_after_delay_times_i(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """MT: pkg/kncloudevents/retries.go, the backoff of the delivery spec (`delay·i` linear,
    `delay·2^i` exponential, i from 0, no jitter)."""
    ce = event(LINEAR, {"fail": [503, 503, 503]})
    send(ce)
    first, second, third = gaps(attempts_of(deliveries, "e2e-parity", ce["id"], 4))
    assert first < 0.2  # 0.3·0: the first retry has no delay
    assert 0.3 <= second < 0.55
    assert 0.6 <= third < 0.85


def test_kafka_class_backoff_starts_at_twice_the_delay(
    class_broker: Callable[..., str], deliveries: Deliveries
) -> None:
    """EKB: the dispatcher's retry policy from the trigger's delivery: exponential `delay·2^n`
    and linear `delay·n`, n from 1 (issue 12 gives the formula; the file is not cited there)."""
    url = class_broker("Kafka")
    ce = event(PARITY, {"fail": [503, 503, 503]})  # exponential from PT0.1S: 0.2, 0.4, 0.8
    assert post(url, ce).status_code == 202
    first, second, third = gaps(attempts_of(deliveries, "e2e-parity", ce["id"], 4))
    assert 0.2 <= first < 0.35
    assert 0.4 <= second < 0.6
    assert 0.8 <= third < 1.05


# --- replies ----------------------------------------------------------------------------------


def test_mt_retries_a_2xx_whose_body_is_no_cloudevent_then_dead_letters_it_bare(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """MT: pkg/broker/filter/filter_handler.go `writeResponse` turns it into a 502 (retried);
    event_dispatcher.go `dispatchExecutionInfoTransformers` adds no `knativeerror*` to it, and the
    store records the letter anyway. An empty 2xx body (the recorder's 204) stays a plain ack."""
    ce = event(PARITY, {"answer-body": "thanks, all good"})
    send(ce)
    [row] = wait_for(lambda: letters(ce["id"], "e2e-retried"), what="the dead letter")
    assert len(deliveries("e2e-parity", ce["id"])) == 4  # retry: 3
    assert row["attempts"] == 4
    assert row["status_code"] is None and row["response_body"] == ""
    assert row["destination"] == ""  # unknown: the letter did not say


def test_kafka_class_dead_letters_a_2xx_whose_body_is_no_cloudevent_at_once(
    class_broker: Callable[..., str], deliveries: Deliveries
) -> None:
    """EKB: `BaseResponseHandler.handle` fails a response body that is no CloudEvent, and the
    dispatcher dead-letters it without retrying."""
    url = class_broker("Kafka")
    ce = event(PARITY, {"answer-body": "thanks, all good"})
    post(url, ce)
    [row] = wait_for(lambda: letters(ce["id"], "e2e-retried"), what="the dead letter")
    assert len(deliveries("e2e-parity", ce["id"])) == 1
    assert row["attempts"] == 1 and row["status_code"] is None


def test_the_dead_letter_store_records_a_letter_without_error_extensions(
    dead_letter_url: str,
) -> None:
    """MT: event_dispatcher.go `dispatchExecutionInfoTransformers` sends timeouts and invalid
    replies to the dead-letter sink with no `knativeerror*`; Knative does not retry a 400 from the
    sink, so refusing such a letter would lose the event."""
    ce = event("objectflow.test.orphan.v1", {"n": 1})
    assert post(dead_letter_url, ce).status_code == 202
    [row] = letters(ce["id"])
    assert row["destination"] == "" and row["status_code"] is None and row["attempts"] == 1
    assert row["cloudevent"]["data"] == {"n": 1}


def test_mt_ttl_stops_a_reply_loop_after_255_hops(
    broker: str, send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """MT: `TTLDefaulter` gives an event without `knativebrokerttl` 255 hops; each reply uses
    one, and an event with none left is dropped. Subscribers do not see the extension."""

    def expired() -> float:
        metrics = requests.get(f"{broker}metrics", timeout=5).text
        line = next((m for m in metrics.splitlines() if 'outcome="ttl-expired"' in m), "x 0")
        return float(line.split()[-1])

    before = expired()
    root = uuid.uuid4().hex[:8]
    send(
        CloudEvent(
            {"type": "objectflow.parity.loop.v1", "source": "/e2e", "id": f"{root}-0"},
            {"loop": root, "hop": 0},
        )
    )

    def chain() -> list[dict[str, Any]]:
        return [d for d in deliveries("e2e-parity") if (d["data"] or {}).get("loop") == root]

    wait_for(
        lambda: expired() > before and len(chain()) >= 255, timeout=60, what="the loop stopped"
    )
    hops = chain()
    assert len(hops) == 255
    assert not any("knativebrokerttl" in d["extensions"] for d in hops)


def test_mt_ingress_stamps_knativearrivaltime(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """MT ingress: every accepted event gets `knativearrivaltime` (the time it arrived)."""
    sent = datetime.now(UTC)
    ce = event(PARITY)
    send(ce)
    [got] = attempts_of(deliveries, "e2e-parity", ce["id"], 1)
    arrived = datetime.fromisoformat(got["extensions"]["knativearrivaltime"])
    assert 0 <= (arrived - sent).total_seconds() < 5


# --- dead letters -----------------------------------------------------------------------------


def test_mt_a_connection_error_is_dead_lettered_as_500_dispatch_error(
    class_broker: Callable[..., str], values: wiring.Values
) -> None:
    """MT: event_dispatcher.go `dispatchExecutionInfoTransformers`: no HTTP answer becomes
    `knativeerrorcode` 500 with `knativeerrordata` "dispatch error"."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    table = [route_to(values, nowhere, "e2e-nowhere", "objectflow.test.nowhere.v1", retry=0)]
    url = class_broker("MTChannelBasedBroker", table)
    ce = event("objectflow.test.nowhere.v1")
    post(url, ce)
    [row] = wait_for(lambda: letters(ce["id"]), what="the dead letter")
    assert row["status_code"] == 500 and row["response_body"] == "dispatch error"
    assert row["destination"] == nowhere


@pytest.mark.parametrize(("broker_class", "kept"), [("MTChannelBasedBroker", 768), ("Kafka", 1024)])
def test_error_data_is_truncated_as_the_class_does(
    class_broker: Callable[..., str], deliveries: Deliveries, broker_class: str, kept: int
) -> None:
    """MT: event_dispatcher.go cuts the base64 text of `knativeerrordata` to 1024 characters
    (768 bytes of body); EKB cuts the body to 1024 bytes before encoding it."""
    url = class_broker(broker_class)
    ce = event(PARITY, {"fail": [400], "failure-body-bytes": 2000})
    post(url, ce)
    [row] = wait_for(lambda: letters(ce["id"], "e2e-retried"), what="the dead letter")
    assert row["status_code"] == 400
    assert row["response_body"] == "x" * kept


def test_a_4xx_from_the_dead_letter_sink_is_not_retried_and_a_5xx_is_with_the_trigger_policy(
    class_broker: Callable[..., str], values: wiring.Values, deliveries: Deliveries
) -> None:
    """MT and EKB deliver to the dead-letter sink with the trigger's own retry policy (a 4xx from
    the sink is final). Sink here: the test function e2e-dead-letter-sink, which answers the
    same scripted statuses as the subscriber."""
    sink = f"http://127.0.0.1:{values.ports()['e2e-dead-letter-sink']}/"
    trigger = f"e2e-dls-{uuid.uuid4().hex[:6]}"
    table = [
        route_to(
            values, "e2e-parity", trigger, "objectflow.test.dls.v1", retry=1, backoff_delay="PT0.1S"
        )
    ]
    url = class_broker("MTChannelBasedBroker", table, sink)
    refused = event("objectflow.test.dls.v1", {"fail": [400]})
    failing = event("objectflow.test.dls.v1", {"fail": [503, 503]})
    post(url, refused)
    post(url, failing)
    wait_for(lambda: counted(trigger, "dropped") == 2, what="both letters given up")
    assert len(deliveries("e2e-dead-letter-sink", refused["id"])) == 1
    assert len(deliveries("e2e-dead-letter-sink", failing["id"])) == 2  # retry: 1


# --- ordering ---------------------------------------------------------------------------------


def test_an_ordered_trigger_does_not_serialise_events_without_partitionkey(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    """EKB: `PartitionKeyExtensionInterceptor` makes `partitionkey` the record key; without one
    the record has no key and the ordered consumer does not hold events back (no `subject`
    fallback)."""
    subject = f"cam-{uuid.uuid4().hex[:8]}"
    slow = event("objectflow.test.sequence.v1", {"fail": [503]}, subject=subject)
    quick = event("objectflow.test.sequence.v1", {}, subject=subject)
    send(slow)
    send(quick)
    retried = attempts_of(deliveries, "e2e-ordered", slow["id"], 2)[1]
    [overtaking] = attempts_of(deliveries, "e2e-ordered", quick["id"], 1)
    assert overtaking["at"] < retried["at"]


def test_camera_chunks_carry_the_camera_uid_as_partitionkey(
    stack_env: dict[str, str], deliveries: Deliveries
) -> None:
    """EKB `PartitionKeyExtensionInterceptor`: one camera's chunks stay in one partition only when
    the MQTT bridge sets `partitionkey` (route `partition-segment: 1`, the camera uid)."""
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    client = _mqtt(stack_env)
    try:
        capture = camera_sim.Capture(camera, camera_sim.image(600, seed=1), total=2)
        camera_sim.publish(client, camera, capture.payloads())
    finally:
        client.loop_stop()
        client.disconnect()

    def chunks() -> list[dict[str, Any]]:
        return [d for d in deliveries("e2e-sources") if (d["data"] or {}).get("id") == camera]

    got = wait_for(lambda: len(chunks()) == 2 and chunks(), what="both chunks")
    assert [d["extensions"].get("partitionkey") for d in got] == [camera, camera]


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_", ["objectflow.parity.emptyany.v1", "objectflow.parity.emptyvalue.v1"]
)
def test_an_empty_filter_matches_everything(
    send: Callable[..., requests.Response], deliveries: Deliveries, type_: str
) -> None:
    """MT and EKB: `MaterializeFiltersList` skips a filter it cannot build (an `any: []`, an
    attribute with an empty value), so it matches every event."""
    ce = event(type_, subject="anything")
    send(ce)
    attempts_of(deliveries, "e2e-parity", ce["id"], 1)


# --- ingress ----------------------------------------------------------------------------------


def test_a_structured_event_under_a_plain_json_content_type_is_400(broker: str) -> None:
    """MT ingress (CloudEvents Go SDK): without `ce-specversion` and without an
    `application/cloudevents*` content type the request is no CloudEvent, whatever its JSON."""
    _headers, body = to_structured(event(PARITY))
    refused = requests.post(
        broker, data=body, headers={"content-type": "application/json"}, timeout=5
    )
    assert refused.status_code == 400
    assert "content type" in refused.json()["detail"]


def test_the_ingress_limit_is_the_class_limit(
    broker: str, class_broker: Callable[..., str]
) -> None:
    """EKB: the ingress's Kafka producer (`max.request.size`, 1 MiB) fails a bigger event with
    503; the MT broker has no such limit."""
    kafka = class_broker("Kafka")
    big = event(PARITY, {"pad": "x" * MIB})
    assert post(kafka, big).status_code == 503
    assert post(kafka, event(PARITY, {"pad": "x" * (MIB // 2)})).status_code == 202
    assert post(broker, big).status_code == 202


def test_the_mqtt_bridge_dead_letters_what_the_sink_can_never_accept(
    stack_env: dict[str, str],
    class_broker: Callable[..., str],
    dead_letter_url: str,
    deliveries: Deliveries,
) -> None:
    """A bridge in front of a Kafka-class broker: an event over the class's 1 MiB limit (EKB's
    503) goes to the dead-letter sink instead of blocking the bridge's one worker; the next
    message flows."""
    run = uuid.uuid4().hex[:8]
    client_id = f"e2e-parity-bridge-{run}"
    routes = [
        {"topic": f"e2e-parity/{run}/+", "type": "objectflow.test.mqtt.v1", "subject-segment": 2}
    ]
    env = {
        **os.environ, **stack_env, "K_SINK": class_broker("Kafka"),
        "OBJECTFLOW_MQTT_ROUTES": json.dumps(routes), "OBJECTFLOW_MQTT_CLIENT_ID": client_id,
        "OBJECTFLOW_DEAD_LETTER_SINK": dead_letter_url, "OBJECTFLOW_MAX_EVENT_BYTES": str(MIB),
    }  # fmt: skip
    _open_session(stack_env, client_id, f"e2e-parity/{run}/+")  # queues what is published now
    client = _mqtt(stack_env)
    bridge = subprocess.Popen(
        [sys.executable, "-m", "functions.sources.mqtt_bridge"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        client.publish(f"e2e-parity/{run}/big", os.urandom(MIB + 1), qos=1).wait_for_publish(10)
        client.publish(f"e2e-parity/{run}/small", json.dumps({"run": run}), qos=1).wait_for_publish(
            10
        )

        def small() -> list[dict[str, Any]]:
            return [
                d
                for d in deliveries("e2e-sources")
                if d["subject"] == "small" and (d["data"] or {}).get("run") == run
            ]

        wait_for(small, what="the message behind the oversized one")
        [row] = wait_for(
            lambda: _letters_from(f"e2e-parity/{run}/big"), what="the oversized letter"
        )
        assert row["status_code"] == 503 or "1048576" in row["response_body"]
    finally:
        client.loop_stop()
        client.disconnect()
        bridge.send_signal(signal.SIGTERM)
        bridge.communicate(timeout=15)
        _forget_session(stack_env, client_id)


# --- sources ----------------------------------------------------------------------------------


def test_kafka_source_records_keep_their_bytes_and_declared_content_type(
    stack_env: dict[str, str], deliveries: Deliveries
) -> None:
    """EKB `InvalidCloudEventInterceptor.validRecord`: `datacontenttype` only from a
    `content-type` header, the value's bytes unchanged, no `key`/`partitionkey` for an empty key;
    a record carrying `ce_*` headers (binary Kafka binding) is that CloudEvent."""
    run = uuid.uuid4().hex[:8]
    plain = b'{"run":  "%s",  "case":  "plain"}' % run.encode()  # spacing no re-encoding keeps
    binary_id = f"kafka-binary-{run}"
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"])
    producer.send("e2e.events", key=b"", value=plain)
    producer.send(
        "e2e.events", key=run.encode(), value=json.dumps({"run": run, "case": "typed"}).encode(),
        headers=[("content-type", b"application/json")],
    )  # fmt: skip
    producer.send(
        "e2e.events", key=run.encode(), value=json.dumps({"run": run, "case": "binary"}).encode(),
        headers=[("ce_specversion", b"1.0"), ("ce_id", binary_id.encode()),
                 ("ce_source", b"/e2e/kafka"), ("ce_type", b"objectflow.test.kafkabinary.v1"),
                 ("content-type", b"application/json")],
    )  # fmt: skip
    producer.flush()
    producer.close()

    def mine(case: str) -> list[dict[str, Any]]:
        found = []
        for d in deliveries("e2e-sources"):
            data = d["data"] if isinstance(d["data"], dict) else {}
            if data.get("run") == run and data.get("case") == case:
                found.append(d)
        return found

    [untyped] = wait_for(lambda: mine("plain"), timeout=30, what="the plain record")
    assert untyped["datacontenttype"] is None
    assert untyped["body"] == plain.decode()
    assert "key" not in untyped["extensions"] and "partitionkey" not in untyped["extensions"]
    [typed] = wait_for(lambda: mine("typed"), timeout=30, what="the typed record")
    assert typed["datacontenttype"] == "application/json"
    assert typed["extensions"]["key"] == typed["extensions"]["partitionkey"] == run
    [binary] = wait_for(lambda: mine("binary"), timeout=30, what="the CloudEvent record")
    assert (binary["id"], binary["type"], binary["source"]) == (
        binary_id,
        "objectflow.test.kafkabinary.v1",
        "/e2e/kafka",
    )


def test_ping_ids_are_random_per_tick_and_time_is_the_send_time(deliveries: Deliveries) -> None:
    """MT: cmd/mtping (pkg/adapter/mtping/runner.go `cronTick`) gives each tick a new UUID and
    sets `time` when it sends."""

    def ticks() -> list[dict[str, Any]]:
        return [d for d in deliveries("e2e-sources") if d["type"] == "dev.knative.sources.ping"]

    before = len(ticks())
    tick = wait_for(lambda: ticks()[before:], timeout=20, what="a scheduled tick")[0]
    assert uuid.UUID(tick["id"]).version == 4
    sent = datetime.fromisoformat(tick["time"]).timestamp()
    assert 0 <= tick["at"] - sent < 2  # stamped when sent, delivered right after
    assert sent % 5 < 1  # sent at the 5-second occurrence it stands for


# --- helpers ----------------------------------------------------------------------------------


def _mqtt(env: dict[str, str]) -> Any:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(env["MQTT_USER"], env["MQTT_PASSWORD"])
    client.connect("127.0.0.1", int(env["MQTT_BROKER_URL"].rsplit(":", 1)[1]))
    client.loop_start()
    return client


def _open_session(env: dict[str, str], client_id: str, topic: str) -> None:
    """A persistent session subscribed to `topic`, so the broker keeps messages for the bridge
    that takes this client id over (as its own session would after its first run)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(env["MQTT_USER"], env["MQTT_PASSWORD"])
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", int(env["MQTT_BROKER_URL"].rsplit(":", 1)[1]))
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10), "Mosquitto did not confirm the subscription"
    client.disconnect()
    client.loop_stop()


def _letters_from(topic: str) -> list[dict[str, Any]]:
    with psycopg2.connect(read_env_file(PATHS)["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status_code, response_body, destination FROM objectflow.dead_letters"
            " WHERE event_source LIKE %s",
            (f"%/{topic}",),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _forget_session(env: dict[str, str], client_id: str) -> None:
    """Drop the test bridge's persistent session from the shared Mosquitto."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(env["MQTT_USER"], env["MQTT_PASSWORD"])
    client.connect("127.0.0.1", int(env["MQTT_BROKER_URL"].rsplit(":", 1)[1]))
    client.disconnect()
