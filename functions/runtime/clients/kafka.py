"""Kafka (kafka-python): only probed here; the Kafka source consumes with its own client.

`import kafka...` below is the kafka-python library (imports are absolute), not this module.
"""

from __future__ import annotations

from functions.runtime import settings
from functions.runtime.clients import core


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


BACKEND = core.Backend("kafka", _transient, _probe)
