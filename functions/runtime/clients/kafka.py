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
    from kafka import KafkaProducer

    cfg = settings.kafka()
    producer = KafkaProducer(
        bootstrap_servers=cfg.servers,
        client_id=cfg.client_id,
        request_timeout_ms=5000,
        max_block_ms=5000,
    )
    try:
        producer.partitions_for("job.events")
    finally:
        producer.close(timeout=2)


BACKEND = core.Backend("kafka", _transient, _probe)
