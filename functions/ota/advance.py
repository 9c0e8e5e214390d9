"""ota-rollouts — takes each running rollout's next decisions (functions/ota/rollouts.py).

Fed by every job and rollout event on `job.events` (through the broker, from the Kafka source
ota-job-events) and by the `ota-rollouts-tick` schedule (every minute):

- an event of a rollout's job or of the rollout itself: that rollout steps — pause it (the
  abort rule, or a wave finished below its threshold), start the next wave, finish it, or
  release pending devices as pacing and maintenance windows allow; job events of no rollout
  are acknowledged untouched;
- the tick: every running rollout steps (pacing refills and windows open without events);
  then, for the rest of its minute (OTA_ROLLOUT_PACE_S), the tick steps every paced rollout
  with devices waiting again each OTA_ROLLOUT_PACE_INTERVAL_S, so its commands go out at the
  pace asked even when no job event comes (the tick is the only wake-up between events); it
  ends early once none waits;
- a paced rollout's `rollout.created`, `rollout.wave_started` or `rollout.resumed` (devices
  newly waiting, maybe after the tick ended early): the same pacing for that rollout, until
  the next minute's tick takes over.
- ota-telemetry calls `advance` itself for the rollouts a device waits in when its heartbeat
  brings it back online (functions/ota/telemetry.py).

Each decision is one transaction guarded by the rollout's version (and releases by its pacing
counter), so two replicas, or an event and the tick, never start a wave twice or release a
device twice: the loser finds the rollout moved and reads it again.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from functions.ota import rollouts
from functions.ota import settings as ota_settings
from functions.ota.events import KINDS, ROLLOUT_KINDS, JobEvent, RolloutEvent, RolloutsTicked
from functions.ota.events import cloudevent_type as ce_type
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.sources.events import Ping

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.ota.rollouts")
PING = "dev.knative.sources.ping"
SETTLED = ("idle", "paused", "done")


def advance(rollout_id: str) -> list[str]:
    """Step one rollout until nothing more is due now; what each step did."""
    cfg = ota_settings.rollout()
    done: list[str] = []
    for _ in range(cfg.steps):
        moment = datetime.now(UTC)

        def one_step(cur: Cursor, at: datetime = moment) -> str:
            return rollouts.step(cur, rollout_id, at, cfg.batch)

        outcome = clients.postgres.transaction(one_step)
        done.append(outcome)
        if outcome in SETTLED:
            break
    return done


def pace(until: float, only: str | None = None) -> None:
    """Step the paced rollouts with online devices waiting every pace interval until the
    monotonic instant `until`, or until none waits. `only`: just that rollout, while any of its
    devices waits, online or not: a fleet starting up with it comes online within the minute,
    and stepping on at the pace releases each device as it does, not at the next tick."""
    interval = ota_settings.rollout().pace_interval_s

    def waiting(cur: Cursor) -> list[str]:
        return rollouts.waiting_for_pace(cur, rollout_id=only)

    while time.monotonic() + interval < until:
        paced = clients.postgres.transaction(waiting)
        if not paced:
            return
        time.sleep(interval)
        for rollout_id in paced:
            advance(rollout_id)


def tick() -> RolloutsTicked:
    until = time.monotonic() + ota_settings.rollout().pace_s
    ids = clients.postgres.transaction(rollouts.running)
    for rollout_id in ids:
        advance(rollout_id)
    pace(until)
    return RolloutsTicked(advanced=len(ids))


# What makes a rollout's devices newly waiting for its pace
WAKES = ("rollout.created", "rollout.wave_started", "rollout.resumed")


@cloudevent_function(
    "ota-rollouts", accepts=[*(ce_type(k) for k in (*KINDS, *ROLLOUT_KINDS)), PING]
)
def ota_rollouts(event: Event[JobEvent | RolloutEvent | Ping]) -> Reply | None:
    if isinstance(event.data, JobEvent | RolloutEvent):
        if event.data.rollout_id is None:
            return None  # a job of no rollout
        steps = advance(event.data.rollout_id)
        log.info("rollout stepped", extra={"rollout_id": event.data.rollout_id, "steps": steps})
        if isinstance(event.data, RolloutEvent) and event.data.type in WAKES:
            now = datetime.now(UTC)
            to_next_minute = 60 - now.second - now.microsecond / 1e6
            pace(time.monotonic() + to_next_minute + 1, only=event.data.rollout_id)
        return None
    report = tick()
    log.info("tick done", extra=report.model_dump())
    return Reply("objectflow.ota.rollouts.ticked.v1", report)
