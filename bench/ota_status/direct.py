"""The source document's status processor: one process, one Kafka consumer, one message at a time
(poll, apply in PostgreSQL, commit its offset, next).

The work per message is ota-status's own (functions.ota.status.handle: parse, Redis fast path,
one PostgreSQL transaction), so the bench compares the plumbing around it and nothing else.
Run in a process of its own (`multiprocessing`, spawn) so its CPU is measured apart.
"""

from __future__ import annotations

import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any


def run(topic: str, group: str, ready: Event, stop: Event, out: Queue[dict[str, Any]]) -> None:
    """Consume `topic` as consumer group `group` from its end until `stop`; `ready` once it
    holds its partitions and knows where to start; the counts into `out` at the end."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from functions.ota import status, statuses
    from functions.runtime import clients, settings

    settings.reset()
    clients.reset()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka().servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    assigned: list[TopicPartition] = []

    class Assigned(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
            pass

        def on_partitions_assigned(self, partitions: list[TopicPartition]) -> None:
            assigned.extend(partitions)

    consumer.subscribe([topic], listener=Assigned())
    counts = {"handled": 0, "refused": 0, "work_s": 0.0}
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=200)
            if assigned and not ready.is_set():
                for tp in assigned:  # resolve "latest" now, before the devices publish
                    consumer.position(tp)
                ready.set()
            for tp, records in polled.items():
                for record in records:
                    began = time.perf_counter()
                    try:
                        status.handle(record.value, record.key.decode() if record.key else None)
                        counts["handled"] += 1
                    except statuses.Refused:
                        counts["refused"] += 1
                    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
                    counts["work_s"] += time.perf_counter() - began
    finally:
        consumer.close(autocommit=False)
        out.put(counts)
