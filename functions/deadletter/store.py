"""The dead-letter store in PostgreSQL (`objectflow.dead_letters`).

One row per (event source, event id, destination): an event dead-lettered again after a
redrive updates its row instead of adding another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg2.extras import RealDictCursor

from functions.runtime import clients

UNKNOWN_DESTINATION = ""  # the letter named no knativeerrordest (MT: timeouts, invalid replies)

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor


@dataclass(frozen=True)
class DeadLetter:
    """An undeliverable event with what the broker knew when it gave up."""

    event: dict[str, Any]  # the CloudEvent in structured form (attributes + data)
    destination: str  # UNKNOWN_DESTINATION when the letter did not say
    status_code: int | None
    response_body: str
    attempts: int
    trigger_name: str | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None


def save(letter: DeadLetter) -> int:
    """Insert or refresh the row for this event and destination; return its id."""
    event = letter.event

    def write(cur: Cursor) -> int:
        cur.execute(
            """
            INSERT INTO objectflow.dead_letters (
                event_id, event_source, event_type, event_subject, destination,
                trigger_name, status_code, response_body, attempts, cloudevent,
                first_attempt_at, last_attempt_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (event_source, event_id, destination) DO UPDATE SET
                status_code = EXCLUDED.status_code,
                response_body = EXCLUDED.response_body,
                attempts = dead_letters.attempts + EXCLUDED.attempts,
                last_attempt_at = EXCLUDED.last_attempt_at,
                dead_lettered_at = now(),
                dead_letter_count = dead_letters.dead_letter_count + 1,
                redriven_at = NULL,
                redrive_status = NULL
            RETURNING id
            """,
            (
                event["id"], event["source"], event["type"], event.get("subject"),
                letter.destination, letter.trigger_name, letter.status_code,
                letter.response_body, letter.attempts, json.dumps(event),
                letter.first_attempt_at, letter.last_attempt_at,
            ),
        )  # fmt: skip
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    return clients.postgres.transaction(write)


def _query(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    def run(cur: RealDictCursor) -> list[dict[str, Any]]:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()] if cur.description else []

    return clients.postgres.transaction(run, cursor_factory=RealDictCursor)


def pending(limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters not yet re-driven successfully, newest first."""
    return _query(
        "SELECT * FROM objectflow.dead_letters WHERE redriven_at IS NULL "
        "ORDER BY dead_lettered_at DESC LIMIT %s",
        (limit,),
    )


def get(letter_id: int) -> dict[str, Any] | None:
    rows = _query("SELECT * FROM objectflow.dead_letters WHERE id = %s", (letter_id,))
    return rows[0] if rows else None


def count_pending() -> int:
    rows = _query("SELECT count(*) AS n FROM objectflow.dead_letters WHERE redriven_at IS NULL")
    return int(rows[0]["n"])


def record_redrive(letter_id: int, status: int, succeeded: bool) -> None:
    _query(
        "UPDATE objectflow.dead_letters SET redrive_status = %s, "
        "redriven_at = CASE WHEN %s THEN now() ELSE NULL END WHERE id = %s RETURNING id",
        (status, succeeded, letter_id),
    )


def purge(letter_ids: list[int] | None = None) -> int:
    """Delete the given rows, or every row already re-driven; return how many went."""
    if letter_ids:
        rows = _query(
            "DELETE FROM objectflow.dead_letters WHERE id = ANY(%s) RETURNING id", (letter_ids,)
        )
    else:
        rows = _query(
            "DELETE FROM objectflow.dead_letters WHERE redriven_at IS NOT NULL RETURNING id"
        )
    return len(rows)
