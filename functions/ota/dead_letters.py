"""Dead-lettering of device records (ota-status's device.status.dlq, ota-telemetry's
device.telemetry.dlq): the refused record's value as it came, its key and origin, and why."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from functions.runtime import clients
from functions.runtime.adapter import Event
from functions.runtime.clients import core
from functions.runtime.registry import EventData

if TYPE_CHECKING:
    from kafka import KafkaProducer


class Refused(Exception):
    """A record that can never apply: it goes to its dead-letter topic with `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def produce(
    producer: Callable[[], KafkaProducer],
    topic: str,
    letter: type[EventData],
    event: Event[Any],
    value: Any,
    refused: Refused,
) -> None:
    """Produce the refused record to `topic` as a `letter` (`producer()` made within the retry
    budget); returns once Kafka acknowledged it (a Kafka outage raises the client's retryable
    error, so the record is redelivered)."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        payload, encoding = raw.decode(), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode(), "base64"
    key = event.extensions.get("key")
    record = letter.model_validate({
        "reason": refused.reason,
        "detail": refused.detail,
        "device_id": key,
        "payload": payload,
        "payload_encoding": encoding,
        "origin": f"{event.source.rpartition('#')[2]}/{event.id}",
        "refused_at": datetime.now(UTC),
    })  # fmt: skip

    def send() -> None:
        future = producer().send(
            topic,
            key=key.encode() if key else None,
            value=record.model_dump_json().encode(),
            headers=[("reason", refused.reason.encode())],
        )
        future.get(timeout=15)

    core.within_budget(clients.kafka.BACKEND, send)


def record_object(value: Any, device_id: str | None, what: str) -> dict[str, Any]:
    """A device record's JSON object (value: JSON, or bytes that were not), keyed by a device;
    `what` names it in the refusal ("a status", "telemetry")."""
    if isinstance(value, bytes):
        try:
            value = json.loads(value)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            raise Refused("not-json", "the record's value is not JSON") from None
    if not device_id:
        raise Refused("no-device", "the record has no key (the device id)")
    if not isinstance(value, dict):
        raise Refused("invalid", f"{what} is a JSON object, not {type(value).__name__}")
    return value


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of a validation error's first complaint."""
    first = exc.errors(include_url=False)[0]
    return ".".join(str(p) for p in first["loc"]) or "value", first["msg"]
