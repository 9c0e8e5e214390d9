"""ota-deadlines — every minute (schedule `ota-deadlines`), jobs a device left silent too long.

A job in dispatched, downloading or flashing carries `deadline_at` = entering that state +
OTA_TIMEOUT_<STATE> (jobs.move). Past it, the job is re-dispatched (back to ready with a
job.ready_to_execute outbox row, so ota-dispatcher sends a new command with a fresh link) while
it has had fewer than OTA_MAX_RETRIES re-dispatches, else it becomes timed_out with a
job.completed (outcome timed_out). Each is a job_events row as well. Overdue jobs are taken in
bounded batches with FOR UPDATE SKIP LOCKED, so two ticks at once never expire one job twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from functions.ota import jobs
from functions.ota import settings as ota_settings
from functions.ota.events import DeadlinesChecked
from functions.ota.metrics import DEADLINES
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.sources.events import Ping

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.ota.deadlines")


def tick(now: datetime | None = None) -> DeadlinesChecked:
    """Expire every job overdue at `now` (default: the current time)."""
    cfg = ota_settings.deadlines()
    moment = now or datetime.now(UTC)

    def expire_batch(cur: Cursor) -> list[jobs.Job]:
        overdue = jobs.take_overdue(cur, moment, cfg.deadlines_batch)
        return [jobs.expire(cur, job, cfg.max_retries) for job in overdue]

    expired: list[jobs.Job] = []
    for _ in range(cfg.deadlines_max_batches):
        batch = clients.postgres.transaction(expire_batch)
        expired += batch
        if len(batch) < cfg.deadlines_batch:
            break
    timed_out = sum(1 for job in expired if job.status == "timed_out")
    DEADLINES.labels("redispatched").inc(len(expired) - timed_out)
    DEADLINES.labels("timed_out").inc(timed_out)
    return DeadlinesChecked(redispatched=len(expired) - timed_out, timed_out=timed_out)


@cloudevent_function("ota-deadlines", accepts=["dev.knative.sources.ping"])
def ota_deadlines(event: Event[Ping]) -> Reply:
    report = tick()
    log.info("deadlines checked", extra=report.model_dump())
    return Reply("objectflow.ota.deadlines.checked.v1", report)
