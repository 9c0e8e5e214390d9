"""ota-status — applies the devices' statuses to their jobs (functions/ota/statuses.py).

Fed by the Kafka source `ota-device-status` on `device.status` (consumer group
`status-processor`), whose records — what devices published to `status/<device_id>/update`,
forwarded unchanged by the MQTT bridge, key = device id — arrive as `dev.knative.kafka.event`
in order per device (`ordered` trigger, partitionkey = the record key). A record that can
never apply (statuses.Refused) is produced to Kafka `device.status.dlq` with its reason and,
once Kafka acknowledged it, acknowledged; nothing else is written for it.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.ota import settings as ota_settings
from functions.ota import statuses
from functions.ota.events import StatusDeadLetter
from functions.runtime import clients
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.clients import core
from functions.sources.events import KafkaRecord

if TYPE_CHECKING:
    from kafka import KafkaProducer

NAME = "ota-status"
log = logging.getLogger("objectflow.ota.status")


@functools.cache
def _producer() -> KafkaProducer:
    return clients.kafka.producer(NAME)


def dead_letter(event: Event[Any], value: Any, refused: statuses.Refused) -> None:
    """Produce the refused record to device.status.dlq; returns once Kafka acknowledged it."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        payload, encoding = raw.decode(), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode(), "base64"
    key = event.extensions.get("key")
    letter = StatusDeadLetter(
        reason=refused.reason,
        detail=refused.detail,
        device_id=key,
        payload=payload,
        payload_encoding=encoding,
        origin=f"{event.source.rpartition('#')[2]}/{event.id}",
        refused_at=datetime.now(UTC),
    )
    topic = ota_settings.status().dlq_topic

    def send() -> None:
        future = _producer().send(
            topic,
            key=key.encode() if key else None,
            value=letter.model_dump_json().encode(),
            headers=[("reason", refused.reason.encode())],
        )
        future.get(timeout=15)

    core.within_budget(clients.kafka.BACKEND, send)


def _fast_path_hit(key: str) -> bool:
    try:
        return bool(clients.redis.client().exists(key))
    except Exception as exc:  # the fast path is an optimisation: PostgreSQL decides
        log.warning("status fast path unavailable", extra={"error": repr(exc)})
        return False


def _fast_path_remember(key: str) -> None:
    try:
        clients.redis.client().set(key, 1, ex=ota_settings.status().dedup_ttl_s)
    except Exception as exc:
        log.warning("status fast path not updated", extra={"error": repr(exc)})


@cloudevent_function(NAME, accepts=["dev.knative.kafka.event"], raw_data=True)
def ota_status(event: Event[Any]) -> None:  # data: a KafkaRecord, or bytes (raw_data)
    value = event.data.root if isinstance(event.data, KafkaRecord) else event.data
    device_id = event.extensions.get("key")
    try:
        status = statuses.parse(value, device_id)
        key = statuses.dedup_key(status)
        if _fast_path_hit(key):
            log.info("duplicate status", extra={"job_id": status.job_id, "fast_path": True})
            return
        attempts = ota_settings.status().lock_retries
        handled = clients.postgres.transaction(
            lambda cur: statuses.apply(cur, str(device_id), status, attempts)
        )
    except statuses.Refused as refused:
        dead_letter(event, value, refused)
        log.warning(
            "status dead-lettered",
            extra={"reason": refused.reason, "detail": refused.detail, "device_id": device_id},
        )
        return
    _fast_path_remember(key)
    job = handled.job
    log.info(
        "status handled",
        extra={"outcome": handled.outcome, "status": status.status, "job_id": status.job_id,
               "job_status": job.status if job else None},
    )  # fmt: skip
