"""MQTT (paho-mqtt, MQTT 5): connecting with a CONNACK deadline, confirmed publishes that carry
the caller's trace as a `traceparent` user property."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from functions.runtime import settings, tracing
from functions.runtime.clients import core

if TYPE_CHECKING:
    import paho.mqtt.client as paho


RECEIVE_MAXIMUM = 20  # Mosquitto's max_inflight_messages, what an MQTT 3.1.1 client gets
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


class MqttUnavailable(Exception):
    """The MQTT broker did not accept the connection or the publish in time."""


class MqttRejected(Exception):
    """The MQTT broker refused our credentials (CONNACK not authorised / bad user or password)."""


def _transient() -> tuple[type[BaseException], ...]:
    return (OSError, MqttUnavailable)


def _rejected(exc: BaseException) -> str | None:
    return "MQTT_USER/MQTT_PASSWORD" if isinstance(exc, MqttRejected) else None


def connect(
    client_id: str = "",
    *,
    clean_start: bool = True,
    timeout: float = 5.0,
    manual_ack: bool = False,
    on_message: Callable[..., None] | None = None,
) -> Any:
    """A new connected paho client (MQTT 5); raises MqttRejected on bad credentials.

    MQTT 5 for its user properties, which carry `traceparent`. A persistent session
    (`clean_start=False`) never expires and at most RECEIVE_MAXIMUM messages are in flight to
    the client, as MQTT 3.1.1 sessions behave on Mosquitto.

    `on_message` is set before connecting: a persistent session delivers queued messages
    right after CONNACK, and paho drops (never acks) messages that arrive without a callback.
    """
    import paho.mqtt.client as mqtt

    cfg = settings.mqtt()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_message = on_message
    if cfg.user:
        client.username_pw_set(cfg.user, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls:
        client.tls_set()
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        outcome["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    client.connect(
        cfg.host, cfg.port, keepalive=30, clean_start=clean_start, properties=_session(clean_start)
    )
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise MqttUnavailable(f"no CONNACK from {cfg.host}:{cfg.port} within {timeout}s")
    reason = outcome["reason"]
    if reason.is_failure:
        client.loop_stop()
        client.disconnect()
        if reason.value in (4, 5, 134, 135):  # bad user/password, not authorised
            raise MqttRejected(str(reason))
        raise MqttUnavailable(str(reason))
    return client


def _session(clean_start: bool) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    if not clean_start:
        properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    return properties


def traceparent(message: Any) -> str | None:
    """The `traceparent` user property of a received MQTT 5 message, if any."""
    for name, value in getattr(message.properties, "UserProperty", None) or ():
        if name == "traceparent":
            return str(value)
    return None


class Publisher:
    """A connected paho client with its network loop on a background thread."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, timeout: float = 5.0) -> None:
        """Publish and wait for the broker's acknowledgement, within the retry budget."""

        def attempt() -> None:
            properties = Properties(PacketTypes.PUBLISH)
            if (parent := tracing.traceparent(new=False)) is not None:
                properties.UserProperty = [("traceparent", parent)]
            info = self.client.publish(topic, payload, qos=qos, properties=properties)
            info.wait_for_publish(timeout=timeout)
            if not info.is_published():
                raise MqttUnavailable(f"publish to {topic} not acknowledged in {timeout}s")

        core.within_budget(BACKEND, attempt)


BACKEND = core.Backend("mqtt", _transient, lambda: connect().disconnect(), rejected=_rejected)
