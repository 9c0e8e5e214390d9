"""ota-rollouts — takes each running rollout's next decisions (functions/ota/rollouts.py).

Fed by every job and rollout event on `job.events` (through the broker, from the Kafka source
ota-job-events) and by the `ota-rollouts-tick` schedule (every minute):

- an event of a rollout's job or of the rollout itself: that rollout steps — pause it (the
  abort rule, or a wave finished below its threshold), start the next wave, finish it, or
  release pending devices as pacing and maintenance windows allow; job events of no rollout
  are acknowledged untouched;
- the tick: every running rollout steps (pacing refills and windows open without events);
  then, for the rest of its minute (OTA_ROLLOUT_PACE_S), the tick looks for paced rollouts
  with devices waiting each OTA_ROLLOUT_PACE_INTERVAL_S and steps them, so their commands go
  out at the pace asked even when no job event comes (the tick is the only wake-up between
  events), also for a rollout created during that minute.
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


def tick() -> RolloutsTicked:
    cfg = ota_settings.rollout()
    until = time.monotonic() + cfg.pace_s
    ids = clients.postgres.transaction(rollouts.running)
    for rollout_id in ids:
        advance(rollout_id)
    # Also while none waits: a paced rollout created during this minute is paced from its start
    while time.monotonic() + cfg.pace_interval_s < until:
        time.sleep(cfg.pace_interval_s)
        for rollout_id in clients.postgres.transaction(rollouts.waiting_for_pace):
            advance(rollout_id)
    return RolloutsTicked(advanced=len(ids))


@cloudevent_function(
    "ota-rollouts", accepts=[*(ce_type(k) for k in (*KINDS, *ROLLOUT_KINDS)), PING]
)
def ota_rollouts(event: Event[JobEvent | RolloutEvent | Ping]) -> Reply | None:
    if isinstance(event.data, JobEvent | RolloutEvent):
        if event.data.rollout_id is None:
            return None  # a job of no rollout
        steps = advance(event.data.rollout_id)
        log.info("rollout stepped", extra={"rollout_id": event.data.rollout_id, "steps": steps})
        return None
    report = tick()
    log.info("tick done", extra=report.model_dump())
    return Reply("objectflow.ota.rollouts.ticked.v1", report)
