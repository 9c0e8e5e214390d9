"""ota-scheduler — turns job events into due times and makes due jobs ready.

Fed by the Kafka source on `job.events` (consumer group `scheduler`), whose records arrive as
the CloudEvents the relay gave them, and by the `ota-scheduler-tick` schedule (every minute):

- job.created / job.updated: a job due now goes scheduled -> ready at once (guarded by the
  event's version, so a redelivered or stale event changes nothing); a later one is recorded in
  the Redis due-time cache.
- job.cancelled: its due time is dropped.
- tick: due scheduled jobs are taken from PostgreSQL in batches with FOR UPDATE SKIP LOCKED
  (two ticks at once never ready one job twice) and made ready, each with its
  job.ready_to_execute outbox row in the same transaction. The cache only lets a tick skip the
  query when nothing is due; it is rebuilt from PostgreSQL when lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from functions.ota import due_cache, jobs
from functions.ota import settings as ota_settings
from functions.ota.events import JobEvent, SchedulerTicked, cloudevent_type
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.sources.events import Ping

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.ota.scheduler")
PING = "dev.knative.sources.ping"
JOB_TYPES = [cloudevent_type(kind) for kind in ("job.created", "job.updated", "job.cancelled")]


def on_job_event(event: JobEvent) -> jobs.Job | None:
    """Apply one job event; returns the job if it was made ready."""
    if event.type == "job.cancelled":
        _cache(lambda r: due_cache.forget(r, event.job_id))
        return None
    if event.status != "scheduled":
        return None
    if event.schedule.due_at.timestamp() <= time.time():
        job = clients.postgres.transaction(
            lambda cur: jobs.make_ready(cur, event.job_id, event.version)
        )
        _cache(lambda r: due_cache.forget(r, event.job_id))
        return job
    _cache(lambda r: due_cache.remember(r, event.job_id, event.schedule.due_at.timestamp()))
    return None


def tick() -> SchedulerTicked:
    """Make every due job ready, in bounded batches; PostgreSQL decides what is due."""
    cfg = ota_settings.scheduler()
    rebuilt = False
    try:
        r = clients.redis.client()
        if not due_cache.is_built(r):
            due_times = clients.postgres.transaction(jobs.scheduled_due_times)
            due_cache.rebuild(r, due_times, cfg.cache_ttl_s)
            rebuilt = True
        if due_cache.due_count(r, time.time()) == 0:
            return SchedulerTicked(readied=0, cache_rebuilt=rebuilt)
    except Exception as exc:  # the cache is an optimisation: without it, ask PostgreSQL
        log.warning("due-time cache unavailable, asking PostgreSQL", extra={"error": repr(exc)})

    def ready_batch(cur: Cursor) -> list[str]:
        return [
            job.id
            for job_id in jobs.take_due(cur, cfg.batch)
            if (job := jobs.make_ready(cur, job_id)) is not None
        ]

    readied: list[str] = []
    for _ in range(cfg.max_batches):
        batch = clients.postgres.transaction(ready_batch)
        readied += batch
        if len(batch) < cfg.batch:
            break
    _cache(lambda r: due_cache.forget(r, *readied))
    return SchedulerTicked(readied=len(readied), cache_rebuilt=rebuilt)


def _cache(action: Callable[[Any], object]) -> None:
    """Run a cache update; a Redis failure only costs the cache (rebuilt by a later tick)."""
    try:
        action(clients.redis.client())
    except Exception as exc:
        log.warning("due-time cache not updated", extra={"error": repr(exc)})
        try:
            clients.redis.client().delete(due_cache.BUILT)
        except Exception:
            log.debug("could not mark the due-time cache stale either")


@cloudevent_function("ota-scheduler", accepts=[*JOB_TYPES, PING])
def ota_scheduler(event: Event[JobEvent | Ping]) -> Reply | None:
    if isinstance(event.data, JobEvent):
        job = on_job_event(event.data)
        if job is not None:
            log.info("job made ready", extra={"job_id": job.id, "version": job.version})
        return None
    report = tick()
    log.info("tick done", extra=report.model_dump())
    return Reply("objectflow.ota.scheduler.ticked.v1", report)
