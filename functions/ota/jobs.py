"""Firmware jobs: their state machine and every change as job row + job_events + outbox row.

    scheduled --(due: scheduler)--> ready --(ota-dispatcher: command on MQTT)--> dispatched
        ^  |                          ^  |                                         |
        |  +--(PATCH reschedule)------+  +--(ota-deadlines: silent, retry left)----+
        |                                   (also from downloading and flashing)   v
        |            dispatched --> downloading --> flashing --> done | error (device statuses)
        |            silent past its deadline, no retry left --> timed_out
        +--(POST cancel, from any state that is not final)--> cancelled

TRANSITIONS below is the whole table: devices only move a job forward (a skipped status, say
a dropped `downloading`, still lets `flashing` apply); only ota-deadlines moves one back, to
ready, for a new command. dispatched, downloading and flashing carry a deadline
(OTA_TIMEOUT_<STATE>), set by `move` on entering them.

Each function here takes the caller's cursor, so a change, its history row and its outbox
event commit together or not at all (functions.runtime.clients.postgres.transaction). Changes
are guarded by the job's `version` (optimistic locking): the caller names the version it saw,
and a job that moved on meanwhile raises VersionMismatch with the current job (or, for the
event-driven changes, returns None).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from psycopg2.extras import Json

from functions.ota import outbox
from functions.ota import settings as ota_settings
from functions.ota.events import JobEvent, Outcome, Schedule
from functions.runtime.errors import BadRequest, Conflict, InvalidData, NotFound, ObjectflowError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

Status = Literal[
    "scheduled",
    "ready",
    "dispatched",
    "downloading",
    "flashing",
    "done",
    "error",
    "timed_out",
    "cancelled",
]
STATES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
FINAL = ("done", "error", "timed_out", "cancelled")
PATCHABLE = ("scheduled", "ready")  # not yet handed to the dispatcher
WITH_DEADLINE = ("dispatched", "downloading", "flashing")  # the device owes a status
TRANSITIONS: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"ready", "cancelled"}),
    "ready": frozenset({"scheduled", "dispatched", "cancelled"}),
    "dispatched": frozenset(
        {"downloading", "flashing", "done", "error", "ready", "timed_out", "cancelled"}
    ),
    "downloading": frozenset({"flashing", "done", "error", "ready", "timed_out", "cancelled"}),
    "flashing": frozenset({"done", "error", "ready", "timed_out", "cancelled"}),
    **{final: frozenset() for final in FINAL},
}
COLUMNS = (
    "id::text, device_id, firmware_version, schedule, status, status_reason, version, "
    "created_at, updated_at, message_id::text, retries, deadline_at, rollout_id::text"
)


def allowed(current: str, new: str) -> bool:
    """Whether a job in `current` may move to `new` (TRANSITIONS)."""
    return new in TRANSITIONS.get(current, frozenset())


class VersionMismatch(ObjectflowError):
    """If-Match names a version the job no longer has (412, with the current job)."""

    status = 412
    code = "version-mismatch"

    def __init__(self, job: Job, expected: int) -> None:
        super().__init__(
            f"job {job.id} is at version {job.version}, not {expected}", field="If-Match"
        )
        self.job = job

    def body(self) -> dict[str, Any]:
        return {**super().body(), "job": self.job.as_json()}


class PreconditionRequired(ObjectflowError):
    status = 428
    code = "precondition-required"


class JobConflict(Conflict):
    """The job's state does not allow the change (finished, cancelled, already dispatched)."""

    code = "job-conflict"


@dataclass(frozen=True)
class Job:
    id: str
    device_id: str
    firmware_version: str
    schedule: Schedule
    status: str
    status_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    message_id: str | None = None  # of the command last sent
    retries: int = 0  # re-dispatches by ota-deadlines
    deadline_at: datetime | None = None  # while dispatched, downloading or flashing
    rollout_id: str | None = None  # the rollout that released it (functions/ota/rollouts.py)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        return cls(
            row[0], row[1], row[2], Schedule.model_validate(row[3]), *row[4:]
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "firmware_version": self.firmware_version,
            "status": self.status,
            "status_reason": self.status_reason,
            "version": self.version,
            "schedule": self.schedule.model_dump(mode="json"),
            "due_at": iso(self.schedule.due_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "message_id": self.message_id,
            "retries": self.retries,
            "deadline_at": iso(self.deadline_at) if self.deadline_at else None,
            "rollout_id": self.rollout_id,
        }


@dataclass(frozen=True)
class Device:
    device_id: str
    model: str
    timezone: str
    current_firmware: str | None
    last_seen: datetime | None
    reported_firmware: str | None = None  # what its latest written heartbeat said
    battery: float | None = None
    signal: float | None = None
    uptime_s: int | None = None

    def as_json(self, online_since: datetime) -> dict[str, Any]:
        """As the API shows it; online: seen since `online_since` (functions/ota/presence.py)."""
        online = self.last_seen is not None and self.last_seen >= online_since
        return {
            "device_id": self.device_id,
            "model": self.model,
            "timezone": self.timezone,
            "current_firmware": self.current_firmware,
            "last_seen": iso(self.last_seen) if self.last_seen else None,
            "online": online,
            "reported_firmware": self.reported_firmware,
            "battery": self.battery,
            "signal": self.signal,
            "uptime_s": self.uptime_s,
        }


# --- devices ----------------------------------------------------------------------------------


DEVICE_COLUMNS = (
    "device_id, model, timezone, current_firmware, last_seen, reported_firmware, battery, "
    "signal, uptime_s"
)


def put_device(cur: Cursor, device_id: str, model: str, timezone: str) -> tuple[Device, bool]:
    """Register or update a device; True when it is new."""
    cur.execute(
        f"""
        INSERT INTO ota.devices (device_id, model, timezone) VALUES (%s, %s, %s)
        ON CONFLICT (device_id) DO UPDATE
            SET model = EXCLUDED.model, timezone = EXCLUDED.timezone, updated_at = now()
        RETURNING {DEVICE_COLUMNS}, (xmax = 0)
        """,
        (device_id, model, timezone),
    )
    row = cur.fetchone()
    assert row is not None
    return Device(*row[:-1]), bool(row[-1])


def get_device(cur: Cursor, device_id: str) -> Device | None:
    cur.execute(f"SELECT {DEVICE_COLUMNS} FROM ota.devices WHERE device_id = %s", (device_id,))
    row = cur.fetchone()
    return Device(*row) if row else None


# --- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleRequest:
    """What a POST or PATCH asks for; resolved against each device's zone in the transaction."""

    schedule_time: datetime | None = None
    cron: str | None = None
    timezone: str | None = None

    def resolve(self, device_timezone: str, now: datetime, tolerance_s: float) -> Schedule:
        from functions.ota import schedule

        return schedule.resolve(
            schedule_time=self.schedule_time,
            cron=self.cron,
            timezone=self.timezone,
            device_timezone=device_timezone,
            now=now,
            past_tolerance_s=tolerance_s,
        )


def create(
    cur: Cursor,
    device_ids: list[str],
    firmware_version: str,
    when: ScheduleRequest,
    *,
    tolerance_s: float,
    field_name: str = "device_id",
    rollout_id: str | None = None,
) -> list[Job]:
    """One job per device, each with its job.created event; nothing if anything is unknown."""
    cur.execute("SELECT 1 FROM ota.firmwares WHERE version = %s", (firmware_version,))
    if cur.fetchone() is None:
        raise InvalidData(f"unknown firmware {firmware_version!r}", field="firmware_version")
    cur.execute(
        "SELECT device_id, timezone FROM ota.devices WHERE device_id = ANY(%s)", (device_ids,)
    )
    zones = dict(cur.fetchall())
    unknown = [d for d in device_ids if d not in zones]
    if unknown:
        shown = ", ".join(repr(d) for d in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InvalidData(f"unknown device {shown}", field=field_name)
    now = datetime.now(UTC)
    created = []
    for device_id in device_ids:
        due = when.resolve(zones[device_id], now, tolerance_s)
        cur.execute(
            f"""
            INSERT INTO ota.jobs
                (id, device_id, firmware_version, schedule, due_at, status, rollout_id)
            VALUES (%s, %s, %s, %s, %s, 'scheduled', %s)
            RETURNING {COLUMNS}
            """,
            (str(uuid.uuid4()), device_id, firmware_version, Json(due.model_dump(mode="json")),
             due.due_at, rollout_id),
        )  # fmt: skip
        job = Job.from_row(_one(cur))
        record(cur, job, "job.created")
        created.append(job)
    return created


def get(cur: Cursor, job_id: str, *, for_update: bool = False) -> Job | None:
    if not _is_uuid(job_id):
        return None
    lock = " FOR UPDATE" if for_update else ""
    cur.execute(f"SELECT {COLUMNS} FROM ota.jobs WHERE id = %s{lock}", (job_id,))
    row = cur.fetchone()
    return Job.from_row(row) if row else None


def page(
    cur: Cursor,
    *,
    status: str | None,
    device_id: str | None,
    limit: int,
    cursor: str | None,
    rollout_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """Jobs in creation order, `limit` at a time; the cursor is the last one's (created_at, id)."""
    where: list[str] = []
    params: list[Any] = []
    if rollout_id is not None:
        if not _is_uuid(rollout_id):
            return [], None
        where.append("rollout_id = %s")
        params.append(rollout_id)
    if status is not None:
        where.append("status = %s")
        params.append(status)
    if device_id is not None:
        where.append("device_id = %s")
        params.append(device_id)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        where.append("(created_at, id) > (%s, %s)")
        params += [created_at, last_id]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur.execute(
        f"SELECT {COLUMNS} FROM ota.jobs {clause} ORDER BY created_at, id LIMIT %s",
        (*params, limit + 1),
    )
    rows = [Job.from_row(row) for row in cur.fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more else None


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not _is_uuid(job_id):
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("not a cursor this API returned", field="cursor") from None
    return moment, job_id


def _locked(cur: Cursor, job_id: str, expected_version: int) -> Job:
    job = get(cur, job_id, for_update=True)
    if job is None:
        raise NotFound(f"no job {job_id}", field="id")
    if job.version != expected_version:
        raise VersionMismatch(job, expected_version)
    return job


@dataclass(frozen=True)
class Changes:
    firmware_version: str | None = None
    when: ScheduleRequest | None = None


def update(
    cur: Cursor, job_id: str, expected_version: int, changes: Changes, *, tolerance_s: float
) -> Job:
    """Reschedule and/or change the firmware of a job not yet dispatched (job.updated)."""
    job = _locked(cur, job_id, expected_version)
    if job.status not in PATCHABLE:
        raise JobConflict(f"job {job.id} is {job.status}; only {'/'.join(PATCHABLE)} jobs change")
    firmware = changes.firmware_version or job.firmware_version
    if changes.firmware_version is not None:
        cur.execute("SELECT 1 FROM ota.firmwares WHERE version = %s", (firmware,))
        if cur.fetchone() is None:
            raise InvalidData(f"unknown firmware {firmware!r}", field="firmware_version")
    when, status = job.schedule, job.status
    if changes.when is not None:
        device = get_device(cur, job.device_id)
        assert device is not None  # a foreign key
        when = changes.when.resolve(device.timezone, datetime.now(UTC), tolerance_s)
        status = "scheduled"  # a ready job that was rescheduled waits for its new time
    cur.execute(
        f"""
        UPDATE ota.jobs SET firmware_version = %s, schedule = %s, due_at = %s, status = %s,
            version = version + 1, updated_at = now()
        WHERE id = %s RETURNING {COLUMNS}
        """,
        (firmware, Json(when.model_dump(mode="json")), when.due_at, status, job.id),
    )
    updated = Job.from_row(_one(cur))
    new_values: dict[str, Any] = {}
    if changes.firmware_version is not None:
        new_values["firmware_version"] = firmware
    if changes.when is not None:
        new_values["schedule"] = when.model_dump(mode="json")
    record(cur, updated, "job.updated", changes=new_values)
    return updated


def cancel(cur: Cursor, job_id: str, expected_version: int, reason: str | None) -> Job:
    job = _locked(cur, job_id, expected_version)
    if job.status in FINAL:
        raise JobConflict(f"job {job.id} is already {job.status}")
    cancelled = move(cur, job, "cancelled", reason=reason or "cancelled by request")
    assert cancelled is not None  # locked at this version by _locked
    record(cur, cancelled, "job.cancelled")
    return cancelled


def make_ready(cur: Cursor, job_id: str, version: int | None = None) -> Job | None:
    """scheduled -> ready if the job is due (and still at `version`); None if it is not."""
    guard = "" if version is None else " AND version = %(version)s"
    cur.execute(
        f"""
        UPDATE ota.jobs SET status = 'ready', status_reason = NULL, version = version + 1,
            updated_at = now()
        WHERE id = %(id)s AND status = 'scheduled' AND due_at <= now(){guard}
        RETURNING {COLUMNS}
        """,
        {"id": job_id, "version": version},
    )
    row = cur.fetchone()
    if row is None:
        return None
    job = Job.from_row(row)
    record(cur, job, "job.ready_to_execute")
    return job


def take_due(cur: Cursor, limit: int) -> list[str]:
    """Ids of due scheduled jobs, locked for this transaction; concurrent ticks skip them."""
    cur.execute(
        """
        SELECT id::text FROM ota.jobs WHERE status = 'scheduled' AND due_at <= now()
        ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED
        """,
        (limit,),
    )
    return [row[0] for row in cur.fetchall()]


def scheduled_due_times(cur: Cursor) -> dict[str, float]:
    """job id -> due time (epoch s) of every scheduled job: what the Redis cache mirrors."""
    cur.execute(
        "SELECT id::text, extract(epoch FROM due_at) FROM ota.jobs WHERE status = 'scheduled'"
    )
    return {job_id: float(due) for job_id, due in cur.fetchall()}


def move(
    cur: Cursor,
    job: Job,
    status: str,
    *,
    reason: str | None = None,
    message_id: str | None = None,
    retry: bool = False,
) -> Job | None:
    """`job` -> `status` if TRANSITIONS allows it and the job is still at `job.version`.

    None when the job moved on meanwhile (optimistic lock). Sets the new state's deadline
    (OTA_TIMEOUT_<STATE>, NULL without one); `message_id` records the command sent, `retry`
    counts a re-dispatch. The caller writes the matching `record`.
    """
    if not allowed(job.status, status):
        raise JobConflict(f"job {job.id} is {job.status}; it cannot become {status}")
    timeout = ota_settings.deadlines().timeout(status)
    cur.execute(
        f"""
        UPDATE ota.jobs SET status = %(status)s, status_reason = %(reason)s,
            version = version + 1, updated_at = now(),
            message_id = coalesce(%(message_id)s::uuid, message_id),
            retries = retries + %(retry)s,
            deadline_at = now() + make_interval(secs => %(timeout)s)
        WHERE id = %(id)s AND version = %(version)s RETURNING {COLUMNS}
        """,
        {"status": status, "reason": reason, "message_id": message_id, "retry": int(retry),
         "timeout": timeout, "id": job.id, "version": job.version},
    )  # fmt: skip
    row = cur.fetchone()
    return Job.from_row(row) if row else None


def dispatched(cur: Cursor, job_id: str, version: int, message_id: str) -> Job | None:
    """ready -> dispatched once command `message_id` is on the broker (job.updated); None if
    the job is no longer ready at `version` (cancelled, patched or dispatched meanwhile)."""
    job = get(cur, job_id)
    if job is None or job.status != "ready" or job.version != version:
        return None
    moved = move(cur, job, "dispatched", message_id=message_id)
    if moved is not None:
        record(
            cur, moved, "job.updated", changes={"status": "dispatched", "message_id": message_id}
        )
    return moved


def take_overdue(cur: Cursor, now: datetime, limit: int) -> list[Job]:
    """Jobs past their state's deadline at `now`, locked; concurrent ticks skip them."""
    cur.execute(
        f"""
        SELECT {COLUMNS} FROM ota.jobs
        WHERE deadline_at <= %s AND status = ANY(%s)
        ORDER BY deadline_at LIMIT %s FOR UPDATE SKIP LOCKED
        """,
        (now, list(WITH_DEADLINE), limit),
    )
    return [Job.from_row(row) for row in cur.fetchall()]


def expire(cur: Cursor, job: Job, max_retries: int) -> Job:
    """A silent overdue job: ready again for a new command while retries are left
    (job.ready_to_execute), else timed_out (job.completed, outcome timed_out)."""
    silence = f"no status within the {job.status} deadline"
    if job.retries < max_retries:
        reason = f"{silence}; re-dispatch {job.retries + 1} of {max_retries}"
        moved = move(cur, job, "ready", reason=reason, retry=True)
        assert moved is not None  # locked by take_overdue
        record(cur, moved, "job.ready_to_execute", changes={"retry": moved.retries,
               "silent_in": job.status})  # fmt: skip
        return moved
    moved = move(cur, job, "timed_out", reason=f"{silence}; {max_retries} re-dispatches used")
    assert moved is not None
    record(cur, moved, "job.completed", changes={"silent_in": job.status}, outcome="timed_out")
    return moved


def record(
    cur: Cursor,
    job: Job,
    kind: str,
    changes: dict[str, Any] | None = None,
    outcome: Outcome | None = None,
) -> JobEvent:
    """The history row and the outbox row of one change, in the change's transaction."""
    event = JobEvent(
        event_id=str(uuid.uuid4()),
        type=kind,
        job_id=job.id,
        device_id=job.device_id,
        firmware_version=job.firmware_version,
        status=job.status,
        version=job.version,
        schedule=job.schedule,
        occurred_at=job.updated_at,
        status_reason=job.status_reason,
        changes=changes or {},
        outcome=outcome,
        rollout_id=job.rollout_id,
    )
    payload = event.model_dump(mode="json")
    history(cur, job, kind, changes or {}, event_id=event.event_id)
    outbox.write(
        cur,
        event_id=uuid.UUID(event.event_id),
        aggregate_id=job.id,
        partition_key=job.device_id,
        event_type=kind,
        payload=payload,
    )
    return event


def history(
    cur: Cursor,
    job: Job,
    kind: str,
    detail: dict[str, Any],
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> None:
    """A `job_events` row alone: what happened to the job (or was ignored) at its version."""
    cur.execute(
        """
        INSERT INTO ota.job_events (event_id, job_id, type, version, status, detail, occurred_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        """,
        (event_id or str(uuid.uuid4()), job.id, kind, job.version, job.status, Json(detail),
         occurred_at or job.updated_at),
    )  # fmt: skip


def iso(moment: datetime) -> str:
    """UTC, as pydantic writes it (the API's response models): 2025-03-30T01:00:00Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _one(cur: Cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return row


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
