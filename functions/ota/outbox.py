"""The transactional outbox `ota.event_outbox`: writes (in the caller's transaction) and the
relay's reads, which are what make its guarantees (docs/ota.md, "Outbox guarantees").

- No gaps: a row is read only once its transaction id is below the reading snapshot's xmin
  horizon, i.e. once every transaction that could still commit an earlier row has ended; rows
  are read in (txid, id) order. A sequence cursor alone would skip a row whose transaction
  commits after a later one (its id was taken at INSERT, it became visible at COMMIT).
- Lanes: a device's rows always fall in lane hash(device) % OTA_OUTBOX_LANES, and a lane is
  worked by one relay at a time (a transaction-scoped advisory lock held while its rows are
  published and marked), so two relays never reorder a device's events.
- Head of line: a device whose oldest pending row is waiting for a retry is skipped as a whole
  until that row is sent or dead; later rows of other devices in the lane go on.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

from functions.runtime import tracing

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

ADVISORY_NAMESPACE = 0x07A0  # first key of the lane locks: pg_try_advisory_xact_lock(ns, lane)


def write(
    cur: Cursor,
    *,
    event_id: uuid.UUID,
    aggregate_id: str,
    partition_key: str,
    event_type: str,
    payload: dict[str, Any],
    aggregate_type: str = "job",
) -> None:
    """Add one event to the outbox, in the caller's transaction (committed with its change),
    with the caller's trace, which the relay continues."""
    cur.execute(
        """
        INSERT INTO ota.event_outbox
            (event_id, aggregate_type, aggregate_id, partition_key, event_type, payload,
             traceparent)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        """,
        (str(event_id), aggregate_type, aggregate_id, partition_key, event_type, Json(payload),
         tracing.traceparent(new=False)),
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    id: int
    event_id: str
    aggregate_id: str
    partition_key: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    traceparent: str | None = None

    def value(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()


def ready_rows(
    cur: Cursor,
    lanes: list[int],
    lane_count: int,
    limit: int,
    skip_ids: list[int] | None = None,
    skip_devices: list[str] | None = None,
) -> list[Row]:
    """Pending rows of `lanes` that may be sent now, oldest first, below the xmin horizon,
    leaving out `skip_ids` (read already) and `skip_devices` (a row refused this cycle).

    The caller holds the lanes' advisory locks (ADVISORY_NAMESPACE, lane) for its transaction.

    A device with a row waiting for its retry (next_attempt_at in the future) contributes
    nothing: its later rows wait behind that one.

    Shaped so a backlog costs `limit` rows a read, not every pending row (bench/README.md,
    "OTA outbox relay"): the rows come from the (txid, id) index, stopping at `limit`, and the
    devices waiting for a retry from the small retry index. A relay holding every lane (one
    replica) filters no lanes, since the lane filter's guessed selectivity makes PostgreSQL sort
    the whole backlog instead.
    """
    filters = (
        ""
        if len(lanes) >= lane_count
        else "AND abs(hashtext(partition_key)) %% %(lane_count)s = ANY(%(lanes)s)"
    )
    if skip_ids:
        filters += " AND id <> ALL(%(skip_ids)s)"
    if skip_devices:
        filters += " AND partition_key <> ALL(%(skip_devices)s)"
    cur.execute(
        f"""
        SELECT id, event_id::text, aggregate_id, partition_key, event_type, payload, attempts,
               created_at, traceparent
        FROM ota.event_outbox
        WHERE sent_at IS NULL AND dead_at IS NULL
          AND txid < pg_snapshot_xmin(pg_current_snapshot())
          {filters}
          AND partition_key NOT IN (
              SELECT partition_key FROM ota.event_outbox
              WHERE sent_at IS NULL AND dead_at IS NULL AND attempts > 0
                AND next_attempt_at > now()
          )
        ORDER BY txid, id
        LIMIT %(limit)s
        """,
        {
            "lanes": lanes,
            "lane_count": lane_count,
            "limit": limit,
            "skip_ids": skip_ids,
            "skip_devices": skip_devices,
        },
    )
    return [Row(*record) for record in cur.fetchall()]


def mark_sent(cur: Cursor, ids: list[int]) -> None:
    if ids:
        cur.execute(
            "UPDATE ota.event_outbox SET sent_at = now(), last_error = NULL WHERE id = ANY(%s)",
            (ids,),
        )


def mark_failed(cur: Cursor, row: Row, error: str, retry_in: timedelta) -> None:
    cur.execute(
        """
        UPDATE ota.event_outbox
        SET attempts = attempts + 1, last_error = %s, next_attempt_at = now() + %s
        WHERE id = %s
        """,
        (error[:2000], retry_in, row.id),
    )


def mark_dead(cur: Cursor, row: Row, error: str) -> None:
    cur.execute(
        """
        UPDATE ota.event_outbox
        SET attempts = attempts + 1, last_error = %s, dead_at = now()
        WHERE id = %s
        """,
        (error[:2000], row.id),
    )


@dataclass(frozen=True)
class Status:
    pending: int
    oldest_age_s: float
    next_retry_s: float | None  # until the soonest row waiting for a retry is due
    behind_horizon: bool  # a committed row waits for an older transaction to end


def status(cur: Cursor) -> Status:
    cur.execute(
        """
        SELECT count(*),
               coalesce(extract(epoch FROM now() - min(created_at)), 0),
               extract(epoch FROM min(next_attempt_at) FILTER (WHERE attempts > 0) - now()),
               coalesce(bool_or(txid >= pg_snapshot_xmin(pg_current_snapshot())), false)
        FROM ota.event_outbox WHERE sent_at IS NULL AND dead_at IS NULL
        """
    )
    count, age, retry, behind = cur.fetchone() or (0, 0, None, False)
    return Status(int(count), float(age), None if retry is None else float(retry), bool(behind))


def purge(cur: Cursor, older_than: timedelta, chunk: int) -> int:
    """Delete up to `chunk` sent rows older than `older_than`; returns how many."""
    cur.execute(
        """
        DELETE FROM ota.event_outbox WHERE id IN (
            SELECT id FROM ota.event_outbox
            WHERE sent_at IS NOT NULL AND sent_at < now() - %s
            ORDER BY sent_at LIMIT %s
        )
        """,
        (older_than, chunk),
    )
    return int(cur.rowcount)
