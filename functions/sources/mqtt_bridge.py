"""MQTT -> CloudEvents bridge: `python -m functions.sources.mqtt_bridge`.

Subscribes every route's topic at QoS 1 in a persistent session (fixed client id, no clean
session) and posts one CloudEvent per message to `K_SINK`. A message is acknowledged to the
broker only once the sink accepted its event, so nothing is lost while the sink or the bridge
is down: the broker keeps unacknowledged messages and redelivers them, and the event id lets the
functions downstream drop the duplicates. The id is the topic, the payload and the MQTT packet
id: MQTT resends an unacknowledged message with the same packet id (and the DUP flag), while a
new message, even with byte-identical payload, gets the next free one. A route's
`partition-segment` becomes the `partitionkey` extension, by which `ordered` triggers keep order.

Posts run on `OBJECTFLOW_MQTT_LANES` threads (default 8), so the messages of a burst share the
broker's journal fsyncs instead of waiting for one each. The messages of one partition key (else
of one topic) always take the same lane, one at a time, so they reach the sink in arrival order;
acknowledgements go out in arrival order.

A route with `kafka-topic` produces to Kafka instead (the OTA device statuses): the payload as it
came, the partition segment as record key, no judgement but the topic's; the message is
acknowledged once Kafka acknowledged the record (acks=all), retried until then. Those sends are
pipelined (the broker's in-flight window, not one Kafka round trip per message, bounds the
rate): each message is acknowledged on MQTT once its record and every earlier one are on Kafka,
in arrival order; when a send fails, it and every later unacknowledged one are sent again in
order, one at a time with retries (the idempotent producer keeps a partition in order
otherwise).

What the sink can never accept (a final 4xx, or an event above the broker class's size limit,
which the Kafka broker answers with a 503 like an outage) goes to the dead-letter sink and is
acknowledged, so a lane never retries a single message forever.

Settings: `K_SINK`, `OBJECTFLOW_MQTT_ROUTES` (JSON list of values.yaml `sources.mqtt-bridge`
routes), `OBJECTFLOW_MQTT_CLIENT_ID`, `OBJECTFLOW_MQTT_LANES`, `OBJECTFLOW_METRICS_PORT`,
`OBJECTFLOW_DEAD_LETTER_SINK` and `OBJECTFLOW_MAX_EVENT_BYTES` (optional), the `MQTT_*`
connection settings and, for Kafka routes, the `KAFKA_*` ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import queue
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pydantic_settings
import requests
import tenacity
from cloudevents.http import CloudEvent
from paho.mqtt.client import MQTTMessage, topic_matches_sub
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.runtime import cehttp, clients, settings, tracing
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import SettingsError
from functions.sources import lifecycle, sink
from functions.sources.routes import MqttBridge, MqttRoute

SOURCE = "mqtt-bridge"
ROUTES_ENV = "OBJECTFLOW_MQTT_ROUTES"
MAX_IN_FLIGHT = 1000  # Kafka sends not yet acknowledged (Mosquitto's window is smaller: 20)
log = logging.getLogger("objectflow.sources.mqtt_bridge")


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBJECTFLOW_MQTT_", extra="ignore")

    routes: list[MqttRoute] = Field(min_length=1)
    client_id: str = Field(default=MqttBridge().client_id, min_length=1)
    lanes: int = Field(default=MqttBridge().lanes, ge=1, le=64)
    metrics_port: int | None = Field(
        default=None, gt=0, lt=65536, validation_alias="OBJECTFLOW_METRICS_PORT"
    )
    max_backoff: float = Field(default=30.0, gt=0, description="Cap of the sink retry delay (s)")
    dead_letter_sink: str | None = Field(
        default=None, validation_alias=sink.DEAD_LETTER_ENV, pattern=r"^https?://"
    )
    max_event_bytes: int | None = Field(
        default=None, gt=0, validation_alias="OBJECTFLOW_MAX_EVENT_BYTES",
        description="The broker class's limit (Kafka: 1 MiB); larger events are dead-lettered",
    )  # fmt: skip


def load_settings() -> BridgeSettings:
    try:
        return settings.load(BridgeSettings)
    except pydantic_settings.SettingsError as exc:  # the env value is not JSON at all
        raise SettingsError(
            ROUTES_ENV, f"must be a JSON list of routes ({exc.__cause__})"
        ) from None


# --- domain: message -> CloudEvent (no servers involved) -------------------------------------


def match_route(routes: Sequence[MqttRoute], topic: str) -> MqttRoute | None:
    """The first route whose topic filter (with + and # wildcards) matches `topic`."""
    return next((route for route in routes if topic_matches_sub(route.topic, topic)), None)


def message_id(topic: str, payload: bytes, packet_id: int) -> str:
    """Same message, same id: a redelivery (same packet id) dedupes downstream, while a new
    message with the same bytes (a static scene, a constant JPEG tail) is a new event.

    The packet id alone is reused once acknowledged, which is why the topic and payload
    count too; a collision needs identical bytes on the same topic with the same packet id
    within the idempotency window (`OBJECTFLOW_IDEMPOTENCY_TTL`)."""
    digest = hashlib.sha256(topic.encode() + b"\0" + payload + b"\0" + str(packet_id).encode())
    return digest.hexdigest()[:32]


def topic_level(topic: str, index: int | None) -> str | None:
    levels = topic.split("/")
    if index is None or index >= len(levels):
        return None
    return levels[index] or None


def decode_payload(payload: bytes) -> tuple[str, Any]:
    """(datacontenttype, data): parsed JSON when the payload is JSON, else the raw bytes."""
    try:
        return "application/json", json.loads(payload)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return "application/octet-stream", payload


def to_cloudevent(
    route: MqttRoute,
    topic: str,
    payload: bytes,
    origin: str,
    packet_id: int,
    traceparent: str | None = None,
) -> CloudEvent:
    """The CloudEvent for one MQTT message; `origin` is `mqtt://host:port`, `packet_id` the
    message's MQTT packet identifier (paho's `mid`), `traceparent` the trace to continue (else
    a new one)."""
    content_type, data = decode_payload(payload)
    attributes = {
        "id": message_id(topic, payload, packet_id),
        "source": f"{origin}/{quote(topic, safe='/')}",
        "type": route.type,
        "datacontenttype": content_type,
        "traceparent": traceparent or objectflow_logging.new_traceparent(),
    }
    subject = topic_level(topic, route.subject_segment)
    if subject is not None:
        attributes["subject"] = subject
    partition_key = topic_level(topic, route.partition_segment)
    if partition_key is not None:
        attributes["partitionkey"] = partition_key
    return CloudEvent(attributes, data)


def trace_header(event: CloudEvent) -> list[tuple[str, bytes]]:
    """The record's W3C `traceparent` header (a Kafka source makes it the event's again)."""
    return [("traceparent", event["traceparent"].encode())]


# --- the bridge: paho network thread -> queue -> one worker that posts and acks ------------------


@dataclass
class InFlight:
    """A message handed on and not yet acknowledged on MQTT."""

    message: MQTTMessage
    topic: str | None  # its Kafka topic; None: posted to the sink by a lane
    event: CloudEvent
    future: Any  # kafka-python's FutureRecordMetadata; a lane's Future of the outcome


class Lanes:
    """Single-thread posting lanes: the same key always takes the same lane, so the events of one
    key are posted one after the other, in the order they were submitted."""

    def __init__(self, count: int) -> None:
        self.pools = [
            ThreadPoolExecutor(1, thread_name_prefix=f"mqtt-bridge-lane-{n}") for n in range(count)
        ]
        self.sessions = sink.Sessions()

    def submit(self, key: str, work: Callable[[requests.Session], str]) -> Future[str]:
        lane = self.pools[zlib.crc32(key.encode()) % len(self.pools)]
        # the caller's log context (event id, topic) goes along to the lane's thread
        return lane.submit(contextvars.copy_context().run, lambda: work(self.sessions.get()))

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.sessions.close()


@dataclass
class Bridge:
    config: BridgeSettings
    sink_url: str
    origin: str

    def __post_init__(self) -> None:
        self.inbox: queue.Queue[MQTTMessage | None] = queue.Queue()
        self.stopping = threading.Event()
        self.lanes = Lanes(self.config.lanes)
        self.client: Any = None
        self.kafka: Any = None  # the producer of the Kafka routes, made on first use
        self.in_flight: deque[InFlight] = deque()  # arrival order

    # paho callbacks run on its network thread: keep them short, never block on the sink.

    def _on_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        sink.MESSAGES.labels(SOURCE, "received").inc()
        self.inbox.put(message)

    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the connection", extra={"reason": str(reason)})
            return
        self._subscribe(client)
        log.info("reconnected to MQTT", extra={"session_present": flags.session_present})

    def _on_subscribe(self, _client: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        granted = [str(code) for code in codes]
        if any(code.is_failure for code in codes):
            log.error("MQTT broker refused a subscription", extra={"granted": granted})
        else:
            log.info("subscribed", extra={"granted": granted})

    def _on_disconnect(self, _client: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not self.stopping.is_set():
            log.warning("MQTT connection lost, reconnecting", extra={"reason": str(reason)})

    def _subscribe(self, client: Any) -> None:
        # Re-subscribing is harmless with a persistent session and needed when it was lost.
        client.subscribe([(route.topic, 1) for route in self.config.routes])

    def connect(self) -> Any:
        """Connect with jittered exponential backoff until it works or the bridge stops."""
        connect = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((OSError, clients.mqtt.MqttUnavailable)),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=self.config.max_backoff),
            stop=tenacity.stop_when_event_set(self.stopping),
            sleep=sink.interruptible_sleep(self.stopping),
            before_sleep=lambda state: log.warning(
                "MQTT connect failed, retrying", extra={"attempt": state.attempt_number}
            ),
            reraise=True,
        )
        client = connect(
            clients.mqtt.connect,
            self.config.client_id,
            clean_start=False,
            manual_ack=True,
            on_message=self._on_message,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=int(self.config.max_backoff))
        self._subscribe(client)
        return client

    def handle(self, message: MQTTMessage) -> None:
        """Forward one message, then ack it (a Kafka route's: once Kafka has it, see `settle`);
        raises SinkUnavailable only when stopping."""
        route = match_route(self.config.routes, message.topic)
        if route is None:  # a subscription left in the persistent session by an older config
            log.warning("no route for topic, dropping", extra={"topic": message.topic})
            self.settle(wait=True)  # acks go out in arrival order
            self._ack(message, "skipped")
            return
        # A device's MQTT 5 `traceparent` user property continues its trace; else one starts.
        with tracing.span(
            f"{route.topic} receive",
            kind=tracing.Kind.CONSUMER,
            parent=clients.mqtt.traceparent(message),
            attributes={"mqtt.topic": message.topic},
        ):
            event = to_cloudevent(route, message.topic, bytes(message.payload), self.origin,
                                  message.mid, tracing.traceparent())  # fmt: skip
            self._handle(route, message, event)

    def _handle(self, route: MqttRoute, message: MQTTMessage, event: CloudEvent) -> None:
        with objectflow_logging.event_context(
            event_id=event["id"],
            event_type=event["type"],
            event_source=event["source"],
            event_subject=event.get("subject"),
            traceparent=event["traceparent"],
            topic=message.topic,
        ):
            if route.kafka_topic is None:
                key = event.get("partitionkey") or message.topic
                posted = self.lanes.submit(key, lambda session: self.forward(session, event))
                self.in_flight.append(InFlight(message, None, event, posted))
                return  # acknowledged by `settle`
            if self.send(route.kafka_topic, message, event):
                return  # in flight: acknowledged by `settle`
            self.settle(wait=True)
            outcome = self.produce(route.kafka_topic, event, bytes(message.payload))
        self._ack(message, outcome)

    def _ack(self, message: MQTTMessage, outcome: str) -> None:
        sink.MESSAGES.labels(SOURCE, outcome).inc()
        self.client.ack(message.mid, message.qos)

    def _producer(self) -> Any:
        if self.kafka is None:
            self.kafka = clients.kafka.producer(SOURCE)
        return self.kafka

    def send(self, topic: str, message: MQTTMessage, event: CloudEvent) -> bool:
        """Send the record without waiting for Kafka; False when the producer refused it at
        once (no metadata, buffer full: Kafka is down), which `produce` then retries."""
        from kafka.errors import KafkaError

        key = event.get("partitionkey")
        try:
            future = self._producer().send(
                topic,
                key=key.encode() if key else None,
                value=bytes(message.payload),
                headers=trace_header(event),
            )
        except KafkaError:
            return False
        self.in_flight.append(InFlight(message, topic, event, future))
        return True

    def settle(self, *, wait: bool) -> None:
        """Ack, in arrival order, the in-flight messages the sink or Kafka has acknowledged
        (`wait`: all of them, waiting for each). From the first failed Kafka send on, every one
        still in flight is produced again in order with retries; raises SinkUnavailable only when
        stopping."""
        while self.in_flight:
            head = self.in_flight[0]
            if head.topic is None:  # a lane's post: it retries until accepted or stopping
                if not head.future.done() and not wait:
                    return
                outcome = head.future.result()
                self.in_flight.popleft()
                self._ack(head.message, outcome)
                continue
            if not head.future.is_done:
                if not wait:
                    return
                with contextlib.suppress(Exception):  # a failed send is handled below
                    head.future.get(timeout=30)
            if not head.future.is_done or head.future.failed():
                log.warning(
                    "Kafka did not take a message, sending it and the later ones again",
                    extra={"topic": head.topic, "error": repr(head.future.exception),
                           "in_flight": len(self.in_flight)},
                )  # fmt: skip
                while self.in_flight:
                    item = self.in_flight[0]
                    if item.topic is None:
                        outcome = item.future.result()
                    else:
                        outcome = self.produce(item.topic, item.event, bytes(item.message.payload))
                    self.in_flight.popleft()
                    self._ack(item.message, outcome)
                return
            self.in_flight.popleft()
            self._ack(head.message, "forwarded")

    def forward(self, session: requests.Session, event: CloudEvent) -> str:
        try:
            self._check_size(event)
            sink.post_until_accepted(
                session,
                self.sink_url,
                event,
                source=SOURCE,
                stop=self.stopping,
                max_wait=self.config.max_backoff,
            )
        except sink.SinkRejected as exc:
            return self.park(session, event, exc)
        return "forwarded"

    def produce(self, topic: str, event: CloudEvent, payload: bytes) -> str:
        """Produce `payload` to `topic` keyed by the event's partition key, retrying until Kafka
        acknowledged it; raises SinkUnavailable only when stopping."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        key = event.get("partitionkey")

        def send() -> None:
            future = self._producer().send(
                topic, key=key.encode() if key else None, value=payload, headers=trace_header(event)
            )
            future.get(timeout=15)

        try:
            tenacity.Retrying(
                retry=tenacity.retry_if_exception(
                    lambda exc: (
                        isinstance(exc, KafkaError)
                        and not isinstance(exc, MessageSizeTooLargeError)
                    )
                ),
                wait=tenacity.wait_exponential_jitter(
                    multiplier=0.2, max=self.config.max_backoff, jitter=0.2
                ),
                stop=tenacity.stop_when_event_set(self.stopping),
                sleep=sink.interruptible_sleep(self.stopping),
                before_sleep=lambda state: log.warning(
                    "Kafka did not take the message, retrying",
                    extra={
                        "topic": topic,
                        "attempt": state.attempt_number,
                        "error": repr(state.outcome and state.outcome.exception()),
                    },
                ),
                reraise=True,
            )(send)
        except MessageSizeTooLargeError as exc:
            reason = sink.SinkRejected(f"kafka {topic}: {exc}", body=str(exc))
            return self.park(self.lanes.sessions.get(), event, reason)
        except KafkaError as exc:  # only when stopping: not acked, redelivered next run
            raise sink.SinkUnavailable(f"kafka {topic}: {exc}") from exc
        return "forwarded"

    def _check_size(self, event: CloudEvent) -> None:
        limit = self.config.max_event_bytes
        if limit is None:
            return
        size = len(cehttp.encode(event)[1])
        if size > limit:
            detail = f"the event is {size} bytes, over the broker's limit of {limit}"
            raise sink.SinkRejected(detail, body=detail)

    def park(self, session: requests.Session, event: CloudEvent, reason: sink.SinkRejected) -> str:
        """Dead-letter an event the sink can never accept; then it is acknowledged. Raises
        SinkUnavailable only when stopping (the message is then redelivered next run)."""
        url = self.config.dead_letter_sink
        if url is None:
            log.error("sink refused the event for good, no dead-letter sink: dropping it",
                      extra={"error": str(reason)})  # fmt: skip
            return "rejected"
        log.error(
            "sink refused the event for good: dead-lettering it", extra={"error": str(reason)}
        )
        try:
            sink.dead_letter(
                session, url, event, destination=self.sink_url, reason=reason,
                source=SOURCE, stop=self.stopping,
            )  # fmt: skip
        except sink.SinkRejected as exc:
            log.error("the dead-letter sink refused it too: dropping it", extra={"error": str(exc)})
            return "rejected"
        return "dead-lettered"

    def work(self) -> None:
        # One worker, FIFO: messages keep their arrival order (per topic, as MQTT guarantees).
        try:
            while True:
                try:  # while sends are in flight, do not sleep on an empty inbox
                    message = self.inbox.get(block=not self.in_flight)
                except queue.Empty:
                    self.settle(wait=True)
                    continue
                if message is None or self.stopping.is_set():
                    return
                self.handle(message)
                self.settle(wait=len(self.in_flight) >= MAX_IN_FLIGHT)
        except sink.SinkUnavailable:
            return  # stopping: not acked, the broker redelivers it to the next run

    def run(self) -> None:
        try:
            self.client = self.connect()
        except (OSError, clients.mqtt.MqttUnavailable):
            if self.stopping.is_set():
                return
            raise
        worker = threading.Thread(target=self.work, name="mqtt-bridge-worker")
        worker.start()
        log.info(
            "bridging MQTT to the sink",
            extra={"routes": [r.topic for r in self.config.routes], "sink": self.sink_url},
        )
        self.stopping.wait()
        self.inbox.put(None)
        worker.join(timeout=10)
        self.lanes.close()
        self.client.disconnect()
        self.client.loop_stop()
        if self.kafka is not None:
            self.kafka.close(timeout=5)
        log.info("stopped")

    def stop(self, *_args: object) -> None:
        self.stopping.set()


def build() -> tuple[Bridge, int | None]:
    config = load_settings()
    mqtt = settings.mqtt()
    return Bridge(config, sink.sink_url(), f"mqtt://{mqtt.host}:{mqtt.port}"), config.metrics_port


def main() -> int:
    try:
        return lifecycle.main(SOURCE, build)
    except clients.mqtt.MqttRejected as exc:
        log.error("MQTT broker rejected MQTT_USER/MQTT_PASSWORD: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
