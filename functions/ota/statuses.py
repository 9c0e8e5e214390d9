"""Device statuses -> job transitions: each applied at most once, forward only, per device.

A device answers the command `message_id` of job `job_id` with `downloading` (with progress),
`flashing`, then `done` or `error`. `apply` runs in one PostgreSQL transaction:

- the status is checked against the job: an unknown job, a job of another device, or `done`
  for a job never dispatched is `Refused` (ota-status dead-letters it), nothing written;
- its idempotency key `(job_id, message_id, status)` is inserted into `ota.device_statuses`;
  a key already there is a duplicate: recorded in `job_events` (`status.duplicate`), no change;
- a forward move (jobs.TRANSITIONS) answering the job's current command (`jobs.message_id`,
  when the dispatcher recorded one) is applied with the job's version as optimistic lock and
  sets the next state's deadline (`status.applied` in `job_events`); `done`/`error` also
  write `job.completed` with the outcome to the outbox, and `done` makes the job's firmware
  the device's current one;
- anything else is recorded and ignored, never applied backwards: `status.repeated` (the job
  already has that status), `status.late` (the job is past it, finished, or the status
  answers an earlier command), or
  `status.impossible` (e.g. `error` after `done`, or a status before the job was dispatched).

Redis, the fast path in front of the unique key (bounded by its TTL, PostgreSQL stays the
truth):

    ota:status:<job_id>:<message_id>:<status>   "1", EX OTA_STATUS_DEDUP_TTL_S
        set after the transaction committed; a key present skips PostgreSQL altogether
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from functions.ota import jobs
from functions.ota.dead_letters import Refused, first_error, record_object
from functions.ota.events import DeviceStatus
from functions.runtime.errors import ObjectflowError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

Outcome = Literal["applied", "repeated", "late", "impossible", "duplicate"]
# How far along a job is, by the statuses a device reports (done and error both end it).
RANK = {"dispatched": 0, "downloading": 1, "flashing": 2, "done": 3, "error": 3}
NOT_DISPATCHED = ("scheduled", "ready")


class JobMoved(ObjectflowError):
    """The job changed between read and update more often than the lock retries allow."""

    status = 503
    code = "job-moved"


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    job: jobs.Job | None  # None: the Redis fast path answered without reading the job


def dedup_key(status: DeviceStatus) -> str:
    return f"ota:status:{status.job_id}:{status.message_id}:{status.status}"


def parse(value: Any, device_id: str | None) -> DeviceStatus:
    """The status a `device.status` record carries (value: JSON, or bytes that were not)."""
    value = record_object(value, device_id, "a status")
    try:
        return DeviceStatus.model_validate(value)
    except ValidationError as exc:
        where, message = first_error(exc)
        if where == "status":
            raise Refused("unknown-status", f"status {value.get('status')!r} is none of "
                          "downloading, flashing, done, error") from None  # fmt: skip
        raise Refused("invalid", f"{where}: {message}") from None


def classify(job_status: str, status: str) -> Outcome:
    """What `status` does to a job in `job_status`."""
    if jobs.allowed(job_status, status):
        return "applied"
    if status == job_status:
        return "repeated"
    if job_status in NOT_DISPATCHED:
        return "impossible"
    if job_status in RANK and RANK[status] == RANK[job_status]:  # done vs error
        return "impossible"
    return "late"


def apply(cur: Cursor, device_id: str, status: DeviceStatus, attempts: int) -> Handled:
    """Apply one status (see the module docstring); raises Refused, or JobMoved when the job
    kept changing under it for `attempts` reads."""
    for _ in range(attempts):
        job = jobs.get(cur, status.job_id)
        if job is None:
            raise Refused("unknown-job", f"no job {status.job_id}")
        if job.device_id != device_id:
            raise Refused("wrong-device", f"job {job.id} is for device {job.device_id!r}")
        if status.status == "done" and job.status in NOT_DISPATCHED and job.message_id is None:
            raise Refused("never-dispatched", f"done for job {job.id}, which is {job.status}")
        outcome = classify(job.status, status.status)
        if outcome == "applied" and job.message_id not in (None, status.message_id):
            outcome = "late"  # it answers an earlier command of a re-dispatched job
        if not _remember(cur, device_id, status, outcome):
            jobs.history(cur, job, "status.duplicate", _detail(status), occurred_at=_now())
            return Handled("duplicate", job)
        if outcome != "applied":
            jobs.history(cur, job, f"status.{outcome}", _detail(status), occurred_at=_now())
            _seen(cur, device_id, status)
            return Handled(outcome, job)
        moved = jobs.move(cur, job, status.status, reason=status.error)
        if moved is None:  # someone else changed the job: read it again, classify anew
            cur.execute(
                "DELETE FROM ota.device_statuses WHERE job_id = %s AND message_id = %s "
                "AND status = %s",
                (status.job_id, status.message_id, status.status),
            )
            continue
        jobs.history(cur, moved, "status.applied", _detail(status))
        if moved.status in ("done", "error"):
            ended: Literal["done", "error"] = "done" if moved.status == "done" else "error"
            jobs.record(cur, moved, "job.completed", _detail(status), outcome=ended)
        _seen(cur, device_id, status, firmware=moved.firmware_version if moved.status == "done"
              else None)  # fmt: skip
        return Handled("applied", moved)
    raise JobMoved(f"job {status.job_id} kept changing; the status is retried", field="job_id")


def _remember(cur: Cursor, device_id: str, status: DeviceStatus, outcome: Outcome) -> bool:
    """Insert the idempotency key; False when it was there already (a duplicate)."""
    cur.execute(
        """
        INSERT INTO ota.device_statuses
            (job_id, message_id, status, device_id, progress, error, reported_at, outcome)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (job_id, message_id, status) DO NOTHING
        """,
        (status.job_id, status.message_id, status.status, device_id, status.progress,
         status.error, status.ts, outcome),
    )  # fmt: skip
    return bool(cur.rowcount)


def _seen(cur: Cursor, device_id: str, status: DeviceStatus, firmware: str | None = None) -> None:
    """The device's last_seen (never backwards), and its current firmware after a `done`."""
    cur.execute(
        """
        UPDATE ota.devices SET last_seen = GREATEST(last_seen, %s),
            current_firmware = COALESCE(%s, current_firmware),
            updated_at = CASE WHEN %s IS NULL THEN updated_at ELSE now() END
        WHERE device_id = %s
        """,
        (status.ts, firmware, firmware, device_id),
    )


def _detail(status: DeviceStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True)


def _now() -> datetime:
    return datetime.now(UTC)
