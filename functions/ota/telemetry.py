"""ota-telemetry — keeps each device's last_seen, reported firmware and link quality from its
heartbeats (functions/ota/presence.py has the coalescing rule).

Fed by the Kafka source `ota-device-telemetry` on `device.telemetry` (consumer group
`telemetry-collector`), whose records — what devices published to `telemetry/<device_id>`,
forwarded unchanged by the MQTT bridge, key = device id — arrive as `dev.knative.kafka.event`
in order per device. Most heartbeats end at the Redis gate; a due one is one UPDATE. A device
that comes back online with it steps the running rollouts it waits in at once (ota-rollouts'
`advance`), so its command leaves within seconds, not at the next minute tick. A record that
can never apply (malformed, wrong types, oversize, unknown device) is produced to Kafka
`device.telemetry.dlq` with its reason and acknowledged; nothing else is written for it.
Outages: PostgreSQL (or Kafka, for a dead letter) answers 503 and the record is redelivered;
Redis down only costs the fast path.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.ota import advance, dead_letters, presence
from functions.ota import settings as ota_settings
from functions.ota.dead_letters import Refused
from functions.ota.events import TelemetryDeadLetter
from functions.ota.metrics import TELEMETRY, TELEMETRY_DEAD_LETTERS
from functions.runtime import clients
from functions.runtime.adapter import Event, cloudevent_function
from functions.sources.events import KafkaRecord

if TYPE_CHECKING:
    from kafka import KafkaProducer

NAME = "ota-telemetry"
log = logging.getLogger("objectflow.ota.telemetry")


@functools.cache
def _producer() -> KafkaProducer:
    return clients.kafka.producer(NAME)


def _gate(device_id: str, seen: datetime, firmware: str, window_s: float) -> bool:
    try:
        return presence.due(clients.redis.client(), device_id, seen, firmware, window_s)
    except Exception as exc:  # the gate is an optimisation: PostgreSQL's WHERE decides too
        log.warning("telemetry gate unavailable", extra={"error": repr(exc)})
        return True


def handle(value: Any, device_id: str | None, now: datetime | None = None) -> str:
    """Apply one device.telemetry record received at `now`; what it did (coalesced, written,
    unchanged, online). Raises Refused for a record that can never apply."""
    cfg = ota_settings.telemetry()
    telemetry = presence.parse(value, device_id, cfg.telemetry_max_bytes)
    assert device_id is not None  # parse refuses a record without a key
    now = now or datetime.now(UTC)
    seen = presence.seen_at(telemetry, now)
    if not _gate(device_id, seen, telemetry.firmware, cfg.online_window):
        return "coalesced"
    try:
        written = clients.postgres.transaction(
            lambda cur: presence.write(cur, device_id, telemetry, seen, now, cfg.online_window)
        )
    except Exception:  # refused or not written: the next delivery must pass the gate
        presence.forget(clients.redis.client(), device_id)
        raise
    for rollout_id in written.rollouts:
        advance.advance(rollout_id)
    if written.rollouts:
        return "online"
    return "written" if written.written else "unchanged"


@cloudevent_function(NAME, accepts=["dev.knative.kafka.event"], raw_data=True)
def ota_telemetry(event: Event[Any]) -> None:  # data: a KafkaRecord, or bytes (raw_data)
    value = event.data.root if isinstance(event.data, KafkaRecord) else event.data
    device_id = event.extensions.get("key")
    try:
        outcome = handle(value, device_id)
    except Refused as refused:
        topic = ota_settings.telemetry().telemetry_dlq_topic
        dead_letters.produce(_producer, topic, TelemetryDeadLetter, event, value, refused)
        TELEMETRY_DEAD_LETTERS.labels(refused.reason).inc()
        log.warning(
            "telemetry dead-lettered",
            extra={"reason": refused.reason, "detail": refused.detail, "device_id": device_id},
        )
        return
    TELEMETRY.labels(outcome).inc()
    if outcome != "coalesced":
        log.info("telemetry", extra={"outcome": outcome, "device_id": device_id})
