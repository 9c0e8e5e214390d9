"""The outbox worker of source document 002, as it describes it: every second it reads the next
10 unsent rows and, one row at a time, sends it to Kafka, flushes the producer (waits for the
acknowledgement) and marks the row sent; a row Kafka did not acknowledge ends the batch and is
tried again at the next poll.

`eager` keeps the batch of 10 and the per-row flush but polls again at once while batches come
back full: the most this design gets out of a backlog.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2

from functions.ota import outbox
from functions.ota.relay import headers

BATCH = 10
PERIOD_S = 1.0


def run(
    dsn: str, producer: Any, topic: str, source: str, stop: threading.Event, eager: bool
) -> None:
    conn = psycopg2.connect(dsn)
    try:
        while not stop.is_set():
            began = time.monotonic()
            with conn, conn.cursor() as cur:
                cur.execute(
                    """
                    SELECT id, event_id::text, aggregate_id, partition_key, event_type, payload,
                           attempts, created_at
                    FROM ota.event_outbox WHERE sent_at IS NULL AND dead_at IS NULL
                    ORDER BY id LIMIT %s
                    """,
                    (BATCH,),
                )
                rows = [outbox.Row(*record) for record in cur.fetchall()]
                for row in rows:
                    if stop.is_set():
                        break
                    future = producer.send(
                        topic,
                        key=row.partition_key.encode(),
                        value=row.value(),
                        headers=headers(row, source),
                    )
                    producer.flush()
                    if future.failed():  # not acknowledged: left unsent for the next poll
                        break
                    cur.execute(
                        "UPDATE ota.event_outbox SET sent_at = now() WHERE id = %s", (row.id,)
                    )
            if eager and len(rows) == BATCH:
                continue
            stop.wait(max(0.0, PERIOD_S - (time.monotonic() - began)))
    finally:
        conn.close()
