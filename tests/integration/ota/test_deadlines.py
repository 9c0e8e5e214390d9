"""ota-deadlines against the real PostgreSQL with a fixed clock: silent jobs are re-dispatched
with a fresh command up to OTA_MAX_RETRIES, then timed_out; locked jobs are skipped."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg2
import pytest
from prometheus_client import REGISTRY

from functions.ota import deadlines, jobs
from functions.runtime import clients, settings
from tests.ota_support import Commands, outbox_rows, post_event, ready_event, sql
from tests.support import wait_for

MakeJob = Callable[..., dict[str, Any]]


def expired(outcome: str) -> float:
    return REGISTRY.get_sample_value("objectflow_ota_deadlines_total", {"outcome": outcome}) or 0


@pytest.fixture
def short_deadlines(ota_env: dict[str, str]) -> None:
    os.environ.update(
        OTA_TIMEOUT_DISPATCHED="30", OTA_TIMEOUT_DOWNLOADING="40", OTA_TIMEOUT_FLASHING="50",
        OTA_MAX_RETRIES="1",
    )  # fmt: skip
    settings.reset()


@pytest.fixture
def subscriber() -> Iterator[Callable[[str], Commands]]:
    opened: list[Commands] = []

    def open_for(device_id: str) -> Commands:
        opened.append(Commands([device_id]))
        return opened[-1]

    yield open_for
    for each in opened:
        each.close()


def current(job_id: str) -> jobs.Job:
    job = clients.postgres.transaction(lambda cur: jobs.get(cur, job_id))
    assert job is not None
    return job


def history(env: dict[str, str], job_id: str) -> list[tuple[Any, ...]]:
    return sql(
        env,
        "SELECT type, status, detail FROM ota.job_events WHERE job_id = %s ORDER BY id",
        (job_id,),
    )


def dispatch(dispatcher: Any, api: Any, job_id: str) -> jobs.Job:
    response = post_event(dispatcher, ready_event(api.get(f"/jobs/{job_id}").json()))
    assert response.status_code == 204, response.text
    job = current(job_id)
    assert job.status == "dispatched" and job.deadline_at is not None
    return job


def test_a_silent_job_is_redispatched_with_a_new_command_then_timed_out(
    short_deadlines: None, dispatcher: Any, ready_job: MakeJob, api: Any,
    subscriber: Callable[[str], Commands], ota_env: dict[str, str],
) -> None:  # fmt: skip
    event = ready_job()
    job_id, device_id = event["job_id"], event["device_id"]
    commands = subscriber(device_id)
    first = dispatch(dispatcher, api, job_id)
    assert first.deadline_at is not None
    assert timedelta(seconds=25) < first.deadline_at - first.updated_at <= timedelta(seconds=30)

    # Not yet overdue: nothing changes.
    deadlines.tick(now=first.deadline_at - timedelta(seconds=1))
    assert current(job_id) == first

    # A tick also expires whatever else is overdue in the shared database: the counters must
    # move by what it reports, and it reports this job.
    counted = {outcome: expired(outcome) for outcome in ("redispatched", "timed_out")}
    written = len(outbox_rows(ota_env, [device_id]))
    report = deadlines.tick(now=first.deadline_at + timedelta(seconds=1))
    again = current(job_id)
    assert (again.status, again.retries, again.deadline_at) == ("ready", 1, None)
    assert "re-dispatch 1 of 1" in (again.status_reason or "")
    kind, status, detail = history(ota_env, job_id)[-1]
    assert (kind, status, detail) == ("job.ready_to_execute", "ready",
                                      {"retry": 1, "silent_in": "dispatched"})  # fmt: skip
    # The tick's row; a running runtime's dispatcher may already have acted on it (job.updated).
    assert outbox_rows(ota_env, [device_id])[written][0] == "job.ready_to_execute"
    assert report.redispatched >= 1
    assert expired("redispatched") == counted["redispatched"] + report.redispatched
    assert expired("timed_out") == counted["timed_out"] + report.timed_out
    counted = {outcome: expired(outcome) for outcome in ("redispatched", "timed_out")}

    second = dispatch(dispatcher, api, job_id)
    wait_for(lambda: len(commands.of(device_id)) == 2, what="the second command")
    one, two = commands.of(device_id)
    assert one["message_id"] != two["message_id"] == second.message_id

    assert second.deadline_at is not None
    report = deadlines.tick(now=second.deadline_at + timedelta(seconds=1))
    final = current(job_id)
    assert (final.status, final.retries, final.deadline_at) == ("timed_out", 1, None)
    kind, status, _detail = history(ota_env, job_id)[-1]
    assert (kind, status) == ("job.completed", "timed_out")
    assert report.timed_out >= 1
    assert expired("timed_out") == counted["timed_out"] + report.timed_out
    event_type, _job, payload = outbox_rows(ota_env, [device_id])[-1]
    assert (event_type, payload["outcome"], payload["status"]) == (
        "job.completed", "timed_out", "timed_out"
    )  # fmt: skip
    # A finished job has no deadline: later ticks leave it alone.
    deadlines.tick(now=second.deadline_at + timedelta(hours=1))
    assert current(job_id) == final


@pytest.mark.parametrize(("state", "timeout"), [("downloading", 40), ("flashing", 50)])
def test_each_state_has_its_own_deadline(
    short_deadlines: None, dispatcher: Any, ready_job: MakeJob, api: Any, state: str,
    timeout: int, ota_env: dict[str, str],
) -> None:  # fmt: skip
    job_id = ready_job()["job_id"]
    job = dispatch(dispatcher, api, job_id)
    # As ota-status moves a job on a device's status (jobs.move sets the state's deadline).
    moved = clients.postgres.transaction(lambda cur: jobs.move(cur, job, state))
    assert moved is not None and moved.deadline_at is not None
    assert moved.deadline_at - moved.updated_at == timedelta(seconds=timeout)
    deadlines.tick(now=moved.deadline_at - timedelta(seconds=1))
    assert current(job_id).status == state
    deadlines.tick(now=moved.deadline_at + timedelta(seconds=1))
    assert (current(job_id).status, current(job_id).retries) == ("ready", 1)
    assert history(ota_env, job_id)[-1][2] == {"retry": 1, "silent_in": state}


def test_without_retries_a_silent_job_times_out_at_once(
    short_deadlines: None, dispatcher: Any, ready_job: MakeJob, api: Any
) -> None:
    os.environ["OTA_MAX_RETRIES"] = "0"
    settings.reset()
    job = dispatch(dispatcher, api, ready_job()["job_id"])
    assert job.deadline_at is not None
    deadlines.tick(now=job.deadline_at + timedelta(seconds=1))
    assert current(job.id).status == "timed_out"


def test_a_job_another_tick_holds_is_skipped(
    short_deadlines: None, dispatcher: Any, ready_job: MakeJob, api: Any,
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    job = dispatch(dispatcher, api, ready_job()["job_id"])
    assert job.deadline_at is not None
    overdue: datetime = job.deadline_at + timedelta(seconds=1)
    dsn = settings.postgres().dsn
    holder = psycopg2.connect(dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM ota.jobs WHERE id = %s FOR UPDATE", (job.id,))
            deadlines.tick(now=overdue)  # SKIP LOCKED: neither waits nor expires it
            assert current(job.id) == job
        holder.rollback()
    finally:
        holder.close()
    deadlines.tick(now=overdue)
    assert current(job.id).status == "ready"


def test_the_transition_table_refuses_what_a_device_cannot_do(
    dispatcher: Any, ready_job: MakeJob, api: Any
) -> None:
    job = dispatch(dispatcher, api, ready_job()["job_id"])
    done = clients.postgres.transaction(lambda cur: jobs.move(cur, job, "done"))
    assert done is not None
    with pytest.raises(jobs.JobConflict):
        clients.postgres.transaction(lambda cur: jobs.move(cur, done, "downloading"))
    # A stale version changes nothing (optimistic lock).
    assert clients.postgres.transaction(lambda cur: jobs.move(cur, job, "error")) is None
    assert current(job.id).status == "done"
