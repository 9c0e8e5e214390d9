"""Rollouts: a firmware taken through a device set in waves of ordinary jobs (docs/ota.md,
"Rollouts"). The arithmetic is functions/ota/waves.py; this is its state in PostgreSQL.

    running --(abort rule, or a wave finished below its threshold: ota-rollouts)--> paused
    running <--(POST /resume)-- paused          running|paused --(POST /cancel)--> cancelled
    running --(every wave finished: ota-rollouts)--> done

Tables (migration ota_0004_rollouts.sql): `ota.rollouts` (status, version, spec, the latest
wave started, the pacing bucket) and `ota.rollout_devices` (each device's position, wave and,
once released, job). A device is *released* when ota-rollouts creates its job (kind now: the
scheduler makes it ready at once, the dispatcher sends it): only devices of started waves, as
the pacing allows, inside their maintenance window and online (seen within OTA_ONLINE_WINDOW,
functions/ota/presence.py); an offline device waits in its wave, counted `offline`. A pause
withdraws released jobs not yet dispatched (cancelled, the device pending again), so a paused
rollout dispatches nothing new; a cancel cancels them for good and reports the jobs already
with their devices.

Every change of a rollout is guarded by its `version` (optimistic locking: the API's If-Match,
and ota-rollouts' own decisions, so two replicas never start a wave twice) and writes a
`rollout.*` outbox row in its transaction (key: the rollout id). Releases are guarded by
`pace_version` as well and leave `version` alone, so an operator's If-Match stays valid while
jobs go out.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

from functions.ota import jobs, outbox, presence, schedule, waves
from functions.ota import settings as ota_settings
from functions.ota.events import RolloutEvent
from functions.ota.metrics import ROLLOUT_PAUSES
from functions.runtime.errors import Conflict, InvalidData, NotFound, ObjectflowError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

ACTIVE = ("running", "paused")
UNDISPATCHED = ("scheduled", "ready")
WITH_DEVICE = ("dispatched", "downloading", "flashing")
COUNTED = (waves.PENDING, waves.OFFLINE, *jobs.STATES)  # every key of a rollout's counts
COLUMNS = (
    "id::text, firmware_version, status, reason, version, spec, device_count, wave, "
    "accepted_wave, tokens, tokens_at, pace_version, cancellation, created_at, updated_at"
)


class RolloutConflict(Conflict):
    """The rollout's status does not allow the change (e.g. resuming one that runs)."""

    code = "rollout-conflict"


class VersionMismatch(ObjectflowError):
    """If-Match names a version the rollout no longer has (412, with the current rollout)."""

    status = 412
    code = "version-mismatch"

    def __init__(self, rollout: dict[str, Any], expected: int) -> None:
        super().__init__(
            f"rollout {rollout['id']} is at version {rollout['version']}, not {expected}",
            field="If-Match",
        )
        self.rollout = rollout

    def body(self) -> dict[str, Any]:
        return {**super().body(), "rollout": self.rollout}


@dataclass(frozen=True)
class Rollout:
    id: str
    firmware_version: str
    status: str
    reason: str | None
    version: int
    spec: dict[str, Any]
    device_count: int
    wave: int
    accepted_wave: int
    tokens: float
    tokens_at: datetime
    pace_version: int
    cancellation: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @property
    def ends(self) -> list[int]:
        return waves.bounds(self.spec["waves"], self.device_count)

    def rate(self, succeeded: int) -> float | None:
        ramp = self.spec.get("ramp") or {}
        return waves.rate_per_minute(
            self.spec.get("max_per_minute"),
            ramp.get("base_per_minute"),
            float(ramp.get("factor", 1)),
            int(ramp.get("every_succeeded", 1)),
            succeeded,
        )


@dataclass(frozen=True)
class Spec:
    """What POST /rollouts asks for, validated by the API's model."""

    firmware_version: str
    devices: list[str] | None
    selector: dict[str, str] | None
    waves: list[float]
    success_threshold: float
    abort: dict[str, Any]
    max_per_minute: int | None
    ramp: dict[str, Any] | None
    maintenance_window: dict[str, Any] | None

    def stored(self) -> dict[str, Any]:
        return {
            "waves": self.waves,
            "success_threshold": self.success_threshold,
            "abort": self.abort,
            "max_per_minute": self.max_per_minute,
            "ramp": self.ramp,
            "maintenance_window": self.maintenance_window,
            "selector": self.selector,
        }


# --- reading ---------------------------------------------------------------------------------


def _load(cur: Cursor, rollout_id: str, *, for_update: bool = False) -> Rollout | None:
    if not jobs._is_uuid(rollout_id):
        return None
    lock = " FOR UPDATE" if for_update else ""
    cur.execute(f"SELECT {COLUMNS} FROM ota.rollouts WHERE id = %s{lock}", (rollout_id,))
    row = cur.fetchone()
    return Rollout(*row) if row else None


def _online_since(now: datetime | None) -> datetime:
    window = ota_settings.telemetry().online_window
    return presence.online_since(now or datetime.now(UTC), window)


def tallies(cur: Cursor, rollout: Rollout, now: datetime | None = None) -> list[waves.Tally]:
    """Each wave's devices by job status (not released: `pending`, or `offline` when not seen
    within OTA_ONLINE_WINDOW of `now`; a device that never sent telemetry is offline)."""
    cur.execute(
        """
        SELECT rd.wave, coalesce(j.status,
            CASE WHEN d.last_seen >= %(since)s THEN %(pending)s ELSE %(offline)s END), count(*)
        FROM ota.rollout_devices rd LEFT JOIN ota.jobs j ON j.id = rd.job_id
        JOIN ota.devices d ON d.device_id = rd.device_id
        WHERE rd.rollout_id = %(id)s GROUP BY 1, 2
        """,
        {"since": _online_since(now), "pending": waves.PENDING, "offline": waves.OFFLINE,
         "id": rollout.id},
    )  # fmt: skip
    per_wave: dict[int, Counter[str]] = {}
    for wave, status, count in cur.fetchall():
        per_wave.setdefault(wave, Counter())[status] = int(count)
    sizes = waves.sizes(rollout.spec["waves"], rollout.device_count)
    return [waves.Tally(size, per_wave.get(i, Counter())) for i, size in enumerate(sizes)]


def members(cur: Cursor, rollout: Rollout) -> list[list[str]]:
    """Each wave's device ids, in the order they were given."""
    cur.execute(
        "SELECT wave, device_id FROM ota.rollout_devices WHERE rollout_id = %s ORDER BY position",
        (rollout.id,),
    )
    found: list[list[str]] = [[] for _ in rollout.spec["waves"]]
    for wave, device_id in cur.fetchall():
        found[wave].append(device_id)
    return found


def as_json(cur: Cursor, rollout: Rollout) -> dict[str, Any]:
    """The rollout as the API shows it, with its waves' devices and counts read now."""
    counted = tallies(cur, rollout)
    spec = rollout.spec
    cancelled = rollout.status == "cancelled"

    def shown(tally: waves.Tally) -> dict[str, int]:
        counts = dict.fromkeys(COUNTED, 0) | dict(tally.counts)
        if cancelled:  # devices never released stay unreleased for good
            counts["cancelled"] += counts[waves.PENDING] + counts[waves.OFFLINE]
            counts[waves.PENDING] = counts[waves.OFFLINE] = 0
        return counts

    def wave_status(i: int, tally: waves.Tally) -> str:
        passed = tally.all_finished and (
            tally.passed(spec["success_threshold"]) or i <= rollout.accepted_wave
        )
        if passed:
            return "done"
        if cancelled:
            return "cancelled"
        if i > rollout.wave:
            return "pending"
        if rollout.status == "paused" and i == rollout.wave:
            return "paused"
        return "running"

    per_wave = [shown(t) for t in counted]
    total = Counter[str]()
    for counts in per_wave:
        total.update(counts)
    body = {
        "id": rollout.id,
        "status": rollout.status,
        "version": rollout.version,
        "reason": rollout.reason,
        "firmware_version": rollout.firmware_version,
        "current_wave": rollout.wave + 1,
        "waves": [
            {"percent": p, "devices": ids, "status": wave_status(i, t), "counts": c}
            for i, (p, ids, t, c) in enumerate(
                zip(spec["waves"], members(cur, rollout), counted, per_wave, strict=True)
            )
        ],
        "counts": {k: total[k] for k in COUNTED},
        "device_count": rollout.device_count,
        "success_threshold": spec["success_threshold"],
        "abort": spec["abort"],
        "max_per_minute": spec.get("max_per_minute"),
        "ramp": spec.get("ramp"),
        "maintenance_window": spec.get("maintenance_window"),
        "selector": spec.get("selector"),
        "cancellation": rollout.cancellation,
        "created_at": jobs.iso(rollout.created_at),
        "updated_at": jobs.iso(rollout.updated_at),
    }
    return body


def get(cur: Cursor, rollout_id: str) -> dict[str, Any] | None:
    rollout = _load(cur, rollout_id)
    return None if rollout is None else as_json(cur, rollout)


def running(cur: Cursor) -> list[str]:
    cur.execute("SELECT id::text FROM ota.rollouts WHERE status = 'running' ORDER BY created_at")
    return [row[0] for row in cur.fetchall()]


# --- changes ---------------------------------------------------------------------------------


def create(cur: Cursor, spec: Spec) -> dict[str, Any]:
    """A running rollout over the devices (in their order) or the selector's (by id)."""
    cur.execute("SELECT 1 FROM ota.firmwares WHERE version = %s", (spec.firmware_version,))
    if cur.fetchone() is None:
        raise InvalidData(f"unknown firmware {spec.firmware_version!r}", field="firmware_version")
    if spec.devices is not None:
        device_ids = spec.devices
        cur.execute("SELECT device_id FROM ota.devices WHERE device_id = ANY(%s)", (device_ids,))
        known = {row[0] for row in cur.fetchall()}
        unknown = [d for d in device_ids if d not in known]
        if unknown:
            shown = ", ".join(repr(d) for d in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise InvalidData(f"unknown device {shown}", field="devices")
    else:
        selector = spec.selector or {}
        where = " AND ".join(f"{key} = %({key})s" for key in sorted(selector))
        cur.execute(f"SELECT device_id FROM ota.devices WHERE {where} ORDER BY device_id", selector)
        device_ids = [row[0] for row in cur.fetchall()]
        if not device_ids:
            raise InvalidData(f"no device matches the selector {selector}", field="selector")
    ends = waves.bounds(spec.waves, len(device_ids))
    ramp = spec.ramp or {}
    rate = waves.rate_per_minute(
        spec.max_per_minute, ramp.get("base_per_minute"), ramp.get("factor", 1),
        ramp.get("every_succeeded", 1), 0,
    )  # fmt: skip
    tokens = waves.capacity(rate) if rate is not None else 0.0
    cur.execute(
        f"""
        INSERT INTO ota.rollouts (id, firmware_version, status, spec, device_count, tokens)
        VALUES (%s, %s, 'running', %s, %s, %s) RETURNING {COLUMNS}
        """,
        (str(uuid.uuid4()), spec.firmware_version, Json(spec.stored()), len(device_ids), tokens),
    )
    rollout = Rollout(*_one(cur))
    cur.executemany(
        "INSERT INTO ota.rollout_devices (rollout_id, position, device_id, wave) "
        "VALUES (%s, %s, %s, %s)",
        [(rollout.id, n, d, waves.wave_of(n, ends)) for n, d in enumerate(device_ids)],
    )
    record(cur, rollout, "rollout.created")
    return as_json(cur, rollout)


def _locked(cur: Cursor, rollout_id: str, expected_version: int) -> Rollout:
    rollout = _load(cur, rollout_id, for_update=True)
    if rollout is None:
        raise NotFound(f"no rollout {rollout_id}", field="rollout_id")
    if rollout.version != expected_version:
        raise VersionMismatch(as_json(cur, rollout), expected_version)
    return rollout


def _change(cur: Cursor, rollout: Rollout, **values: Any) -> Rollout | None:
    """Set `values` if the rollout is still at its version (version + 1); None if it moved."""
    sets = ", ".join(f"{name} = %({name})s" for name in values)
    cur.execute(
        f"""
        UPDATE ota.rollouts SET {sets}, version = version + 1, updated_at = now()
        WHERE id = %(id)s AND version = %(version)s RETURNING {COLUMNS}
        """,
        {**{k: Json(v) if isinstance(v, dict) else v for k, v in values.items()},
         "id": rollout.id, "version": rollout.version},
    )  # fmt: skip
    row = cur.fetchone()
    return Rollout(*row) if row else None


def pause(cur: Cursor, rollout: Rollout, reason: str, by: str) -> Rollout | None:
    """running -> paused (None if the rollout moved on); its undispatched jobs withdrawn."""
    paused = _change(cur, rollout, status="paused", reason=reason)
    if paused is None:
        return None
    withdrawn = _stop_undispatched(cur, paused, f"rollout paused: {reason}", release_again=True)
    record(cur, paused, "rollout.paused", {"by": by, "withdrawn": withdrawn})
    ROLLOUT_PAUSES.labels(by).inc()  # a rolled-back, retried pause counts twice (alert: > 0)
    return paused


def pause_by_request(
    cur: Cursor, rollout_id: str, expected: int, reason: str | None
) -> dict[str, Any]:
    rollout = _locked(cur, rollout_id, expected)
    if rollout.status != "running":
        raise RolloutConflict(
            f"rollout {rollout.id} is {rollout.status}; only a running one pauses"
        )
    paused = pause(cur, rollout, reason or "paused by request", by="operator")
    assert paused is not None  # locked at this version
    return as_json(cur, paused)


def resume(cur: Cursor, rollout_id: str, expected: int) -> dict[str, Any]:
    """paused -> running; the wave it paused in is accepted (its gate: all its devices finish)."""
    rollout = _locked(cur, rollout_id, expected)
    if rollout.status != "paused":
        raise RolloutConflict(
            f"rollout {rollout.id} is {rollout.status}; only a paused one resumes"
        )
    resumed = _change(cur, rollout, status="running", reason=None, accepted_wave=rollout.wave)
    assert resumed is not None
    record(cur, resumed, "rollout.resumed")
    return as_json(cur, resumed)


def cancel(cur: Cursor, rollout_id: str, expected: int, reason: str | None) -> dict[str, Any]:
    """-> cancelled: jobs not yet dispatched cancelled, devices never released left out, and
    the jobs already with their devices reported (they run to their end)."""
    rollout = _locked(cur, rollout_id, expected)
    if rollout.status not in ACTIVE:
        raise RolloutConflict(f"rollout {rollout.id} is already {rollout.status}")
    why = reason or "cancelled by request"
    cancelled_jobs = _stop_undispatched(cur, rollout, f"rollout cancelled: {why}")
    cur.execute(
        "SELECT count(*) FROM ota.rollout_devices WHERE rollout_id = %s AND job_id IS NULL",
        (rollout.id,),
    )
    not_started = int(_one(cur)[0])
    cur.execute(
        "SELECT id::text, device_id, status FROM ota.jobs WHERE rollout_id = %s "
        "AND status = ANY(%s) ORDER BY device_id",
        (rollout.id, list(WITH_DEVICE)),
    )
    dispatched = [{"job_id": j, "device_id": d, "status": s} for j, d, s in cur.fetchall()]
    cancellation = {
        "cancelled_jobs": cancelled_jobs,
        "not_started": not_started,
        "dispatched": dispatched,
    }
    done = _change(cur, rollout, status="cancelled", reason=why, cancellation=cancellation)
    assert done is not None
    record(cur, done, "rollout.cancelled", cancellation)
    return as_json(cur, done)


def _stop_undispatched(
    cur: Cursor, rollout: Rollout, reason: str, *, release_again: bool = False
) -> int:
    """Cancel the rollout's released jobs no dispatcher has sent yet; how many. With
    `release_again`, their devices become pending, to be released anew later."""
    cur.execute(
        f"SELECT {jobs.COLUMNS} FROM ota.jobs WHERE rollout_id = %s AND status = ANY(%s) "
        "FOR UPDATE",
        (rollout.id, list(UNDISPATCHED)),
    )
    stopped = [jobs.Job.from_row(row) for row in cur.fetchall()]
    for job in stopped:
        jobs.cancel(cur, job.id, job.version, reason)
    if release_again and stopped:
        cur.execute(
            "UPDATE ota.rollout_devices SET job_id = NULL WHERE rollout_id = %s "
            "AND job_id = ANY(%s::uuid[])",
            (rollout.id, [job.id for job in stopped]),
        )
    return len(stopped)


# --- what ota-rollouts does ------------------------------------------------------------------


def step(cur: Cursor, rollout_id: str, now: datetime, batch: int) -> str:
    """Take one decision for a running rollout; what it did ('idle' when nothing was due,
    'moved' when another decision won the optimistic lock)."""
    rollout = _load(cur, rollout_id)
    if rollout is None or rollout.status != "running":
        return "idle"
    counted = tallies(cur, rollout, now)
    spec = rollout.spec
    decision = waves.decide(
        rollout.wave,
        rollout.accepted_wave,
        counted,
        spec["success_threshold"],
        spec["abort"]["failure_percent"],
        spec["abort"]["min_finished"],
    )
    if decision.kind == "pause":
        assert decision.reason is not None
        by = "abort" if "abort" in decision.reason else "threshold"
        return "paused" if pause(cur, rollout, decision.reason, by) else "moved"
    if decision.kind == "start":
        started = _change(cur, rollout, wave=decision.wave)
        if started is None:
            return "moved"
        record(cur, started, "rollout.wave_started")
        return "started"
    if decision.kind == "done":
        finished = _change(cur, rollout, status="done", reason=decision.reason)
        if finished is None:
            return "moved"
        record(cur, finished, "rollout.completed")
        return "done"
    return release(cur, rollout, counted, now, batch)


def waiting_for_pace(
    cur: Cursor, now: datetime | None = None, *, rollout_id: str | None = None
) -> list[str]:
    """Running rollouts with a pace (max_per_minute or a ramp) and pending online devices in a
    started wave: what only their next tokens release (an offline device waits for its
    heartbeat, which steps the rollout itself). With `rollout_id`: that rollout while any of
    its started waves' devices is pending, online or not yet (a fleet just starting up)."""
    online = "" if rollout_id is not None else "AND d.last_seen >= %(online)s"
    cur.execute(
        f"""
        SELECT r.id::text FROM ota.rollouts r
        WHERE r.status = 'running' AND (%(id)s::uuid IS NULL OR r.id = %(id)s::uuid)
          AND (jsonb_typeof(r.spec -> 'max_per_minute') = 'number'
               OR jsonb_typeof(r.spec -> 'ramp') = 'object')
          AND EXISTS (SELECT 1 FROM ota.rollout_devices rd
                      JOIN ota.devices d ON d.device_id = rd.device_id
                      WHERE rd.rollout_id = r.id AND rd.job_id IS NULL AND rd.wave <= r.wave
                        {online})
        """,
        {"online": _online_since(now), "id": rollout_id},
    )
    return [row[0] for row in cur.fetchall()]


def release(
    cur: Cursor, rollout: Rollout, counted: list[waves.Tally], now: datetime, batch: int
) -> str:
    """Create the jobs of pending (online) devices of started waves, as pacing and windows
    allow; offline ones wait."""
    if not any(t.of(waves.PENDING) for t in counted[: rollout.wave + 1]):
        return "idle"
    rate = rollout.rate(sum(t.of("done") for t in counted))
    allowed = batch
    tokens = 0.0
    if rate is not None:
        tokens = waves.refill(rollout.tokens, rollout.tokens_at, now, rate)
        allowed = min(batch, int(tokens))
        if allowed < 1:
            return "idle"
    zones = _open_zones(cur, rollout, now)
    if zones is not None and not zones:
        return "idle"
    zone_filter = "" if zones is None else "AND d.timezone = ANY(%(zones)s)"
    # The bucket first, guarded: a concurrent step that won it (or a pause) makes this a no-op
    cur.execute(
        """
        UPDATE ota.rollouts SET pace_version = pace_version + 1
        WHERE id = %(id)s AND version = %(version)s AND pace_version = %(pace)s
        """,
        {"id": rollout.id, "version": rollout.version, "pace": rollout.pace_version},
    )
    if cur.rowcount == 0:
        return "moved"
    cur.execute(
        f"""
        SELECT rd.position, rd.device_id FROM ota.rollout_devices rd
        JOIN ota.devices d ON d.device_id = rd.device_id
        WHERE rd.rollout_id = %(id)s AND rd.job_id IS NULL AND rd.wave <= %(wave)s {zone_filter}
            AND d.last_seen >= %(since)s
        ORDER BY rd.position LIMIT %(limit)s FOR UPDATE OF rd SKIP LOCKED
        """,
        {
            "id": rollout.id,
            "wave": rollout.wave,
            "zones": zones,
            "limit": allowed,
            "since": _online_since(now),
        },
    )
    chosen = cur.fetchall()
    if not chosen:
        return "idle"
    created = jobs.create(cur, [d for _, d in chosen], rollout.firmware_version,
                          jobs.ScheduleRequest(), tolerance_s=0, rollout_id=rollout.id)  # fmt: skip
    cur.executemany(
        "UPDATE ota.rollout_devices SET job_id = %s WHERE rollout_id = %s AND position = %s",
        [(job.id, rollout.id, position) for job, (position, _) in zip(created, chosen,
                                                                       strict=True)],
    )  # fmt: skip
    if rate is not None:
        cur.execute(
            "UPDATE ota.rollouts SET tokens = %s, tokens_at = %s WHERE id = %s",
            (tokens - len(created), now, rollout.id),
        )
    return "released"


def _open_zones(cur: Cursor, rollout: Rollout, now: datetime) -> list[str] | None:
    """The time zones of pending devices whose maintenance window is open; None: no window."""
    window = rollout.spec.get("maintenance_window")
    if not window:
        return None
    cur.execute(
        """
        SELECT DISTINCT d.timezone FROM ota.rollout_devices rd
        JOIN ota.devices d ON d.device_id = rd.device_id
        WHERE rd.rollout_id = %s AND rd.job_id IS NULL AND rd.wave <= %s
        """,
        (rollout.id, rollout.wave),
    )
    zones = [row[0] for row in cur.fetchall()]
    return [
        name
        for name in zones
        if schedule.window_open(
            window["cron"], window["duration_minutes"], schedule.zone(name), now
        )
    ]


def record(cur: Cursor, rollout: Rollout, kind: str, detail: dict[str, Any] | None = None) -> None:
    """The rollout's outbox row (type rollout.<what>, key: the rollout id)."""
    event = RolloutEvent(
        event_id=str(uuid.uuid4()),
        type=kind,
        rollout_id=rollout.id,
        firmware_version=rollout.firmware_version,
        status=rollout.status,
        version=rollout.version,
        wave=rollout.wave + 1,
        reason=rollout.reason,
        occurred_at=rollout.updated_at,
        detail=detail or {},
    )
    outbox.write(
        cur,
        event_id=uuid.UUID(event.event_id),
        aggregate_id=rollout.id,
        partition_key=rollout.id,
        event_type=kind,
        payload=event.model_dump(mode="json"),
        aggregate_type="rollout",
    )


def _one(cur: Cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return row
