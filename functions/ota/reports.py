"""Reports of the OTA domain (docs/ota.md, "Reports"): the read-optimised tables kept from
events, the analytical queries over them and over the jobs, and the cache of heavy answers.

Writing (ota-reports' event handler, on the primary): `apply_completed` inserts the finished
job's `ota.report_jobs` row keyed by its job id and, in the same statement, adds it to the
day's per-firmware and per-model counts of `ota.report_daily` — only when the row was new, so a
replayed job.completed counts nothing twice. `apply_rollout` keeps a rollout's events.

Reading: every analytical query runs on its own pool (`OTA_REPORTS_DATABASE_URL`, a read
replica, else the primary's DSN) under `SET LOCAL statement_timeout`, so a heavy report gives
up with a 503 well before the HTTP timeouts above it (the source document's timeout cascade).

Redis keys:
- `ota:reports:generation` — a counter the event handler bumps after each applied event;
- `ota:reports:<kind>:<generation>:<sha1 of the parameters>` — a cached PDF or summary, with
  `OTA_REPORTS_CACHE_TTL_S`; a new event moves the generation, so stale entries are never read
  again and expire on their own.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from functions.ota import jobs, rollouts
from functions.ota import settings as ota_settings
from functions.ota.events import JobEvent, RolloutEvent
from functions.runtime import clients, settings
from functions.runtime.clients import core
from functions.runtime.errors import DependencyUnavailable, ObjectflowError

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor
    from psycopg2.pool import ThreadedConnectionPool

GENERATION_KEY = "ota:reports:generation"
OUTCOMES = ("done", "error", "timed_out")
CSV_COLUMNS = (
    "job_id", "device_id", "firmware_version", "rollout_id", "status", "created_at",
    "dispatched_at", "finished_at", "duration_s", "model", "retries", "status_reason",
)  # fmt: skip


class QueryTimeout(ObjectflowError):
    """An analytical query ran past OTA_REPORTS_STATEMENT_TIMEOUT_MS (retrying would too)."""

    status = 503
    code = "query-timeout"


# --- writing: the event handler's statements ------------------------------------------------

_COMPLETED = """
WITH job AS (
    SELECT j.id, j.device_id, coalesce(d.model, 'unknown') AS model, j.created_at,
           (SELECT min(e.occurred_at) FROM ota.job_events e
            WHERE e.job_id = j.id AND e.status = 'dispatched') AS dispatched_at
    FROM ota.jobs j LEFT JOIN ota.devices d ON d.device_id = j.device_id WHERE j.id = %(job_id)s
), fact AS (
    INSERT INTO ota.report_jobs (job_id, event_id, device_id, model, firmware_version,
                                 rollout_id, outcome, created_at, dispatched_at, finished_at,
                                 duration_s)
    SELECT %(job_id)s, %(event_id)s, %(device_id)s, coalesce(job.model, 'unknown'),
           %(firmware)s, %(rollout_id)s, %(outcome)s, job.created_at, job.dispatched_at,
           %(finished_at)s::timestamptz,
           extract(epoch FROM %(finished_at)s::timestamptz - job.dispatched_at)
    FROM (SELECT 1) one LEFT JOIN job ON true
    ON CONFLICT (job_id) DO NOTHING
    RETURNING *
)
INSERT INTO ota.report_daily (day, dimension, key, succeeded, failed, timed_out, timed,
                              duration_sum_s, duration_max_s)
SELECT (fact.finished_at AT TIME ZONE 'UTC')::date, dim.dimension, dim.key,
       (outcome = 'done')::int, (outcome = 'error')::int, (outcome = 'timed_out')::int,
       (duration_s IS NOT NULL)::int, coalesce(duration_s, 0), coalesce(duration_s, 0)
FROM fact, LATERAL (VALUES ('firmware', fact.firmware_version), ('model', fact.model))
     AS dim (dimension, key)
ON CONFLICT (day, dimension, key) DO UPDATE SET
    succeeded = ota.report_daily.succeeded + excluded.succeeded,
    failed = ota.report_daily.failed + excluded.failed,
    timed_out = ota.report_daily.timed_out + excluded.timed_out,
    timed = ota.report_daily.timed + excluded.timed,
    duration_sum_s = ota.report_daily.duration_sum_s + excluded.duration_sum_s,
    duration_max_s = greatest(ota.report_daily.duration_max_s, excluded.duration_max_s)
"""


def apply_completed(cur: Cursor, event: JobEvent) -> bool:
    """Count one finished job; False when it was counted already (a replay)."""
    if event.outcome is None or not jobs._is_uuid(event.job_id):
        return False
    cur.execute(
        _COMPLETED,
        {
            "job_id": event.job_id,
            "event_id": event.event_id,
            "device_id": event.device_id,
            "firmware": event.firmware_version,
            "rollout_id": event.rollout_id,
            "outcome": event.outcome,
            "finished_at": event.occurred_at,
        },
    )
    return cur.rowcount > 0


def apply_rollout(cur: Cursor, event: RolloutEvent) -> bool:
    """Keep one rollout event for its timeline; False when it was kept already."""
    cur.execute(
        """
        INSERT INTO ota.report_rollout_events
            (event_id, rollout_id, type, status, wave, reason, occurred_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING
        """,
        (event.event_id, event.rollout_id, event.type, event.status, event.wave, event.reason,
         event.occurred_at),
    )  # fmt: skip
    return cur.rowcount > 0


# --- the cache ------------------------------------------------------------------------------


def bump_generation() -> None:
    """Every cached report is stale from now on."""
    clients.redis.call(lambda r: r.incr(GENERATION_KEY))


def cached(kind: str, params: dict[str, Any], build: Callable[[], bytes]) -> bytes:
    """The cached answer of report `kind` for `params` at the current generation, else built
    and cached for OTA_REPORTS_CACHE_TTL_S. The generation is read before building, so an event
    arriving meanwhile leaves this answer under the older generation, never read again."""
    generation = int(clients.redis.call(lambda r: r.get(GENERATION_KEY)) or 0)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    key = f"ota:reports:{kind}:{generation}:{digest}"
    found = clients.redis.call(lambda r: r.get(key))
    if isinstance(found, bytes):
        return found
    made = build()
    ttl = ota_settings.reports().cache_ttl_s
    clients.redis.call(lambda r: r.set(key, made, ex=ttl))
    return made


# --- reading: the analytical pool -----------------------------------------------------------


@functools.cache
def _pool() -> ThreadedConnectionPool:
    from psycopg2.pool import ThreadedConnectionPool

    cfg = ota_settings.reports()
    dsn = cfg.database_url.get_secret_value() if cfg.database_url else settings.postgres().dsn
    return ThreadedConnectionPool(0, cfg.pool_max, dsn=dsn, connect_timeout=3)


@functools.cache
def _slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(ota_settings.reports().pool_max)


def reset() -> None:
    """Forget the pool (tests change the settings)."""
    if _pool.cache_info().currsize:
        _pool().closeall()
    _pool.cache_clear()
    _slots.cache_clear()


@contextlib.contextmanager
def analytical() -> Iterator[Cursor]:
    """A read-only transaction on the reports' pool under the statement timeout. Connecting
    retries within the budget (503 after it); a statement past the timeout is QueryTimeout."""
    import psycopg2
    from psycopg2 import errors

    def connect() -> Connection:
        conn = _pool().getconn()
        try:
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                timeout = ota_settings.reports().statement_timeout_ms
                cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout),))
        except BaseException:
            _pool().putconn(conn, close=True)
            raise
        return conn

    with _slots():
        conn = core.within_budget(clients.postgres.BACKEND, connect)
        broken = False
        try:
            with conn.cursor() as cur:
                yield cur
            conn.rollback()  # read only: nothing to keep
        except errors.QueryCanceled as exc:
            limit = ota_settings.reports().statement_timeout_ms
            raise QueryTimeout(f"the report's query ran past {limit} ms") from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DependencyUnavailable("postgres", core.first_line(exc)) from exc
        finally:
            if not broken and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            _pool().putconn(conn, close=broken or bool(conn.closed))


# --- the jobs CSV ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """GET /reports/jobs.csv's filters; `start`/`end`: created_at in [start, end)."""

    start: datetime | None = None
    end: datetime | None = None
    firmware: str | None = None
    status: str | None = None
    rollout_id: str | None = None


_CSV_QUERY = """
SELECT j.id, j.device_id, j.firmware_version, j.rollout_id, j.status, j.created_at,
       coalesce(r.dispatched_at, (SELECT min(e.occurred_at) FROM ota.job_events e
                                  WHERE e.job_id = j.id AND e.status = 'dispatched')),
       coalesce(r.finished_at, (SELECT max(e.occurred_at) FROM ota.job_events e
                                WHERE e.job_id = j.id AND e.type IN ('job.completed',
                                                                     'job.cancelled'))),
       d.model, j.retries, j.status_reason
FROM ota.jobs j
LEFT JOIN ota.report_jobs r ON r.job_id = j.id
LEFT JOIN ota.devices d ON d.device_id = j.device_id
WHERE (%(start)s::timestamptz IS NULL OR j.created_at >= %(start)s)
  AND (%(end)s::timestamptz IS NULL OR j.created_at < %(end)s)
  AND (%(firmware)s::text IS NULL OR j.firmware_version = %(firmware)s)
  AND (%(status)s::text IS NULL OR j.status = %(status)s)
  AND (%(rollout_id)s::uuid IS NULL OR j.rollout_id = %(rollout_id)s)
ORDER BY j.created_at, j.id
"""


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return jobs.iso(value)
    return "" if value is None else value


def csv_line(row: Sequence[Any]) -> str:
    job_id, device, firmware, rollout, status, created, dispatched, finished, *rest = row
    duration = (finished - dispatched).total_seconds() if finished and dispatched else None
    values = [job_id, device, firmware, rollout, status, created, dispatched, finished,
              None if duration is None else round(duration, 3), *rest]  # fmt: skip
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([_cell(v) for v in values])  # RFC 4180
    return out.getvalue()


def header_line() -> str:
    return ",".join(CSV_COLUMNS) + "\r\n"


def job_csv(where: JobFilter) -> Iterator[str]:
    """The CSV's lines, read through a server-side cursor `csv_batch` rows at a time. The
    transaction opens (and the first batch is read) on the first `next`, so a caller that
    takes it before answering turns an outage into a 503 rather than a cut-off body."""
    batch = ota_settings.reports().csv_batch
    with analytical() as plain:
        conn = plain.connection
        with conn.cursor(name="ota_report_jobs") as cur:  # named: a server-side cursor
            cur.itersize = batch
            cur.execute(_CSV_QUERY, where.__dict__)
            rows = cur.fetchmany(batch)
            yield header_line()
            while rows:
                yield "".join(csv_line(row) for row in rows)
                rows = cur.fetchmany(batch)


# --- the summary ----------------------------------------------------------------------------


def summary(cur: Cursor, start: date | None, end: date | None, firmware: str | None) -> dict:
    """Totals per firmware and per model, and per day, from `ota.report_daily` (UTC days in
    [start, end)); `firmware` narrows everything to that version (its models then counted
    from its finished jobs in `ota.report_jobs`)."""
    cur.execute(
        """
        SELECT dimension, key, day, succeeded, failed, timed_out, timed, duration_sum_s,
               duration_max_s
        FROM ota.report_daily
        WHERE (%(start)s::date IS NULL OR day >= %(start)s)
          AND (%(end)s::date IS NULL OR day < %(end)s)
          AND (%(firmware)s::text IS NULL OR (dimension = 'firmware' AND key = %(firmware)s))
        ORDER BY day, dimension, key
        """,
        {"start": start, "end": end, "firmware": firmware},
    )
    groups: dict[str, dict[str, dict[str, Any]]] = {"firmware": {}, "model": {}}
    days: dict[str, dict[str, Any]] = {}
    for dimension, key, day, ok, failed, timed_out, timed, total_s, max_s in cur.fetchall():
        for into in (groups[dimension].setdefault(key, _zero()),
                     *([days.setdefault(day.isoformat(), _zero())]
                       if dimension == "firmware" else [])):  # fmt: skip
            into["succeeded"] += ok
            into["failed"] += failed
            into["timed_out"] += timed_out
            into["_timed"] += timed
            into["_sum"] += total_s
            into["max_duration_s"] = max(into["max_duration_s"], max_s)
    if firmware is not None:  # the daily model rows span every firmware: count its jobs
        cur.execute(
            """
            SELECT model, count(*) FILTER (WHERE outcome = 'done'),
                   count(*) FILTER (WHERE outcome = 'error'),
                   count(*) FILTER (WHERE outcome = 'timed_out'), count(duration_s),
                   coalesce(sum(duration_s), 0), coalesce(max(duration_s), 0)
            FROM ota.report_jobs
            WHERE firmware_version = %(firmware)s
              AND (%(start)s::date IS NULL OR finished_at >= %(start)s::date AT TIME ZONE 'UTC')
              AND (%(end)s::date IS NULL OR finished_at < %(end)s::date AT TIME ZONE 'UTC')
            GROUP BY model ORDER BY model
            """,
            {"start": start, "end": end, "firmware": firmware},
        )
        groups["model"] = {
            key: {"succeeded": ok, "failed": failed, "timed_out": timed_out, "_timed": timed,
                  "_sum": total_s, "max_duration_s": max_s}
            for key, ok, failed, timed_out, timed, total_s, max_s in cur.fetchall()
        }  # fmt: skip
    return {
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        "firmware": firmware,
        "totals": _shown(_total(groups["firmware"].values())),
        "by_firmware": [{"firmware_version": k, **_shown(v)}
                        for k, v in groups["firmware"].items()],
        "by_model": [{"model": k, **_shown(v)} for k, v in groups["model"].items()],
        "by_day": [{"day": k, **_shown(v)} for k, v in days.items()],
    }  # fmt: skip


def _zero() -> dict[str, Any]:
    return {"succeeded": 0, "failed": 0, "timed_out": 0, "_timed": 0, "_sum": 0.0,
            "max_duration_s": 0.0}  # fmt: skip


def _total(parts: Any) -> dict[str, Any]:
    total = _zero()
    for part in parts:
        for key in ("succeeded", "failed", "timed_out", "_timed", "_sum"):
            total[key] += part[key]
        total["max_duration_s"] = max(total["max_duration_s"], part["max_duration_s"])
    return total


def _shown(counts: dict[str, Any]) -> dict[str, Any]:
    finished = counts["succeeded"] + counts["failed"] + counts["timed_out"]
    mean = counts["_sum"] / counts["_timed"] if counts["_timed"] else None
    return {
        "finished": finished,
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "timed_out": counts["timed_out"],
        "success_percent": round(100 * counts["succeeded"] / finished, 2) if finished else None,
        "mean_duration_s": None if mean is None else round(mean, 3),
        "max_duration_s": round(counts["max_duration_s"], 3),
    }


# --- one rollout's report -------------------------------------------------------------------


def rollout_report(cur: Cursor, rollout_id: str) -> dict[str, Any] | None:
    """What the rollout's PDF shows: the rollout as ota-api shows it, its timeline, the
    finished jobs' durations, and its jobs' final statuses over time (for the chart)."""
    shown = rollouts.get(cur, rollout_id)
    if shown is None:
        return None
    cur.execute(
        "SELECT occurred_at, type, status, wave, reason FROM ota.report_rollout_events "
        "WHERE rollout_id = %s ORDER BY occurred_at, type",
        (rollout_id,),
    )
    timeline = [
        {"at": at, "type": kind, "status": status, "wave": wave, "reason": reason}
        for at, kind, status, wave, reason in cur.fetchall()
    ]
    # Final statuses from the jobs' own history (not the report tables), so the chart agrees
    # with the counts even before ota-reports has seen every event.
    cur.execute(
        """
        SELECT e.occurred_at, e.status FROM ota.job_events e JOIN ota.jobs j ON j.id = e.job_id
        WHERE j.rollout_id = %s AND e.type IN ('job.completed', 'job.cancelled')
        ORDER BY e.occurred_at
        """,
        (rollout_id,),
    )
    finished = [(at, status) for at, status in cur.fetchall()]
    cur.execute(
        "SELECT count(duration_s), avg(duration_s), max(duration_s) FROM ota.report_jobs "
        "WHERE rollout_id = %s",
        (rollout_id,),
    )
    timed, mean, longest = cur.fetchone() or (0, None, None)
    return {
        "rollout": shown,
        "timeline": timeline,
        "finished": finished,
        "durations": {"timed": int(timed or 0), "mean_s": mean, "max_s": longest},
    }
