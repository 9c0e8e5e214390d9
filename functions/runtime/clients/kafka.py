"""Kafka (kafka-python): probed here, and the one producer configuration every writer uses;
the Kafka source consumes with its own client.

`import kafka...` below is the kafka-python library (imports are absolute), not this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.runtime import settings
from functions.runtime.clients import core

if TYPE_CHECKING:
    from kafka import KafkaProducer


def _transient() -> tuple[type[BaseException], ...]:
    import kafka.errors as e

    return (e.KafkaConnectionError, e.KafkaTimeoutError, e.BrokerNotAvailableError)


def _probe() -> None:
    from kafka import KafkaAdminClient

    cfg = settings.kafka()
    admin = KafkaAdminClient(
        bootstrap_servers=cfg.servers, client_id=cfg.client_id, request_timeout_ms=5000
    )
    try:
        admin.describe_cluster()  # names no topic: domains declare their own
    finally:
        admin.close()


def producer(name: str, **overrides: Any) -> KafkaProducer:
    """kafka-python's idempotent producer (client id `<KAFKA_CLIENT_ID>-<name>`), every
    ordering-relevant option spelt out."""
    from kafka import KafkaProducer

    cfg = settings.kafka()
    options: dict[str, Any] = {
        "bootstrap_servers": cfg.servers,
        "client_id": f"{cfg.client_id}-{name}",
        "acks": "all",
        "enable_idempotence": True,  # no duplicates or reordering from the producer's retries
        "max_in_flight_requests_per_connection": 5,  # the most idempotence keeps in order
        "linger_ms": 2,
        "batch_size": 256 * 1024,
        "max_block_ms": 5000,  # send() gives up quickly when Kafka is down
        "request_timeout_ms": 5000,
        "delivery_timeout_ms": 12000,
    }
    return KafkaProducer(**(options | overrides))


BACKEND = core.Backend("kafka", _transient, _probe)
