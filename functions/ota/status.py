"""ota-status — applies the devices' statuses to their jobs (functions/ota/statuses.py).

Fed by the Kafka source `ota-device-status` on `device.status` (consumer group
`status-processor`), whose records — what devices published to `status/<device_id>/update`,
forwarded unchanged by the MQTT bridge, key = device id — arrive as `dev.knative.kafka.event`
in order per device (`ordered` trigger, partitionkey = the record key). A record that can
never apply (statuses.Refused) is produced to Kafka `device.status.dlq` with its reason and,
once Kafka acknowledged it, acknowledged; nothing else is written for it.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from functions.ota import dead_letters, statuses
from functions.ota import settings as ota_settings
from functions.ota.events import DeviceStatus, StatusDeadLetter
from functions.ota.metrics import STATUS_DEAD_LETTERS
from functions.runtime import clients
from functions.runtime.adapter import Event, cloudevent_function
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
    topic = ota_settings.status().dlq_topic
    dead_letters.produce(_producer, topic, StatusDeadLetter, event, value, refused)
    STATUS_DEAD_LETTERS.labels(refused.reason).inc()


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


def handle(value: Any, device_id: str | None) -> tuple[DeviceStatus, statuses.Handled]:
    """Apply one device.status record (its value and key); raises statuses.Refused."""
    status = statuses.parse(value, device_id)
    key = statuses.dedup_key(status)
    if _fast_path_hit(key):
        return status, statuses.Handled("duplicate", None)
    attempts = ota_settings.status().lock_retries
    handled = clients.postgres.transaction(
        lambda cur: statuses.apply(cur, str(device_id), status, attempts)
    )
    _fast_path_remember(key)
    return status, handled


@cloudevent_function(NAME, accepts=["dev.knative.kafka.event"], raw_data=True)
def ota_status(event: Event[Any]) -> None:  # data: a KafkaRecord, or bytes (raw_data)
    value = event.data.root if isinstance(event.data, KafkaRecord) else event.data
    device_id = event.extensions.get("key")
    try:
        status, handled = handle(value, device_id)
    except statuses.Refused as refused:
        dead_letter(event, value, refused)
        log.warning(
            "status dead-lettered",
            extra={"reason": refused.reason, "detail": refused.detail, "device_id": device_id},
        )
        return
    job = handled.job
    log.info(
        "status handled",
        extra={"outcome": handled.outcome, "status": status.status, "job_id": status.job_id,
               "job_status": job.status if job else None, "fast_path": job is None},
    )  # fmt: skip
