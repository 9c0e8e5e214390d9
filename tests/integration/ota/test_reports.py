"""ota-reports in-process against the real PostgreSQL and Redis: events counted once however
often they arrive, the streamed CSV, the cached summary and PDF (invalidated by events), the
analytical pool's timeout and replica DSN, the dashboard's pages, and bad input refused."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import errors

from functions.ota import reports
from functions.runtime import clients, settings
from tests.ota_reports_support import pdf_text
from tests.ota_support import post_event, sql, unique
from tests.support import http_app

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


@pytest.fixture
def reporting(ota_env: dict[str, str]) -> Iterator[Any]:
    reports.reset()
    with http_app(ROOT / "functions" / "ota" / "reporting.py", "ota_reports") as client:
        yield client
    reports.reset()


@pytest.fixture
def model(api: Any) -> Callable[[], str]:
    """Registers a device of a model unique to the test (its daily counts are the test's)."""
    name = unique("model")

    def register(timezone: str = "UTC") -> str:
        device_id = unique("dev")
        answer = api.put(f"/devices/{device_id}", json={"model": name, "timezone": timezone})
        assert answer.status_code == 201, answer.text
        return device_id

    register.model = name  # type: ignore[attr-defined]
    return register


def job(api: Any, device_id: str, firmware: str) -> dict[str, Any]:
    """A job due tomorrow (the running scheduler leaves it alone)."""
    due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    answer = api.post("/jobs", json={"device_id": device_id, "firmware_version": firmware,
                                     "schedule_time": due})  # fmt: skip
    assert answer.status_code == 201, answer.text
    return answer.json()


def finish(env: dict[str, str], created: dict[str, Any], outcome: str, took_s: float = 7.5,
           dispatched: bool = True) -> dict[str, Any]:  # fmt: skip
    """Move the job to `outcome` with its history (a dispatch at T0, job.completed `took_s`
    later), as the pipeline would; returns the job.completed record value."""
    job_id, finished_at = created["id"], T0 + timedelta(seconds=took_s)
    event_id = str(uuid.uuid4())
    sql(env, "UPDATE ota.jobs SET status = %s, version = 4 WHERE id = %s", (outcome, job_id))
    if dispatched:
        sql(env, "INSERT INTO ota.job_events (event_id, job_id, type, version, status, "
            "occurred_at) VALUES (%s, %s, 'job.updated', 3, 'dispatched', %s)",
            (str(uuid.uuid4()), job_id, T0))  # fmt: skip
    sql(env, "INSERT INTO ota.job_events (event_id, job_id, type, version, status, occurred_at)"
        " VALUES (%s, %s, 'job.completed', 4, %s, %s)",
        (event_id, job_id, outcome, finished_at))  # fmt: skip
    return {
        "event_id": event_id, "type": "job.completed", "job_id": job_id,
        "device_id": created["device_id"], "firmware_version": created["firmware_version"],
        "status": outcome, "version": 4, "schedule": created["schedule"],
        "occurred_at": finished_at.isoformat(), "outcome": outcome, "rollout_id": None,
    }  # fmt: skip


def daily(env: dict[str, str], dimension: str, key: str) -> tuple[Any, ...] | None:
    rows = sql(env, "SELECT succeeded, failed, timed_out, timed, duration_sum_s, duration_max_s "
               "FROM ota.report_daily WHERE dimension = %s AND key = %s",
               (dimension, key))  # fmt: skip
    assert len(rows) <= 1  # one UTC day in these tests
    return rows[0] if rows else None


def csv_rows(answer: Any) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text, newline="")))


# --- events -----------------------------------------------------------------------------------


def test_a_finished_job_is_counted_once_however_often_it_arrives(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    record = finish(ota_env, job(api, model(), firmware), "done")
    for _ in range(3):  # the first delivery, a redelivery, a replay of the topic
        assert post_event(reporting, record).status_code == 204
    replayed_again = {**record, "event_id": str(uuid.uuid4())}  # the same job, another event
    assert post_event(reporting, replayed_again).status_code == 204
    assert daily(ota_env, "firmware", firmware) == (1, 0, 0, 1, 7.5, 7.5)
    assert daily(ota_env, "model", model.model) == (1, 0, 0, 1, 7.5, 7.5)
    [row] = sql(ota_env, "SELECT outcome, model, duration_s, event_id::text FROM ota.report_jobs"
                " WHERE job_id = %s", (record["job_id"],))  # fmt: skip
    assert row == ("done", model.model, 7.5, record["event_id"])


def test_failures_and_timeouts_have_their_own_counts(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    device = model()
    for outcome, took in (("done", 4.0), ("error", 10.0), ("timed_out", 30.0), ("done", 6.0)):
        record = finish(ota_env, job(api, device, firmware), outcome, took)
        assert post_event(reporting, record).status_code == 204
    never_sent = finish(ota_env, job(api, device, firmware), "timed_out", dispatched=False)
    assert post_event(reporting, never_sent).status_code == 204
    assert daily(ota_env, "firmware", firmware) == (2, 1, 2, 4, 50.0, 30.0)
    summary = reporting.get("/reports/summary", params={"firmware": firmware}).json()
    assert summary["totals"] == {
        "finished": 5, "succeeded": 2, "failed": 1, "timed_out": 2, "success_percent": 40.0,
        "mean_duration_s": 12.5, "max_duration_s": 30.0}  # fmt: skip
    assert [f["firmware_version"] for f in summary["by_firmware"]] == [firmware]
    assert [d["day"] for d in summary["by_day"]] == [T0.date().isoformat()]
    assert {m["model"]: m["finished"] for m in summary["by_model"]}[model.model] == 5


def test_a_rollout_event_is_kept_once(reporting: Any, ota_env: dict[str, str]) -> None:
    rollout_id = str(uuid.uuid4())
    record = {"event_id": str(uuid.uuid4()), "type": "rollout.paused", "rollout_id": rollout_id,
              "firmware_version": "fw", "status": "paused", "version": 3, "wave": 2,
              "reason": "wave 2: too many failed", "occurred_at": T0.isoformat(),
              "detail": {"by": "abort"}}  # fmt: skip
    for _ in range(2):
        assert post_event(reporting, record).status_code == 204
    rows = sql(ota_env, "SELECT type, status, wave, reason FROM ota.report_rollout_events "
               "WHERE rollout_id = %s", (rollout_id,))  # fmt: skip
    assert rows == [("rollout.paused", "paused", 2, "wave 2: too many failed")]


def test_bad_events_are_refused_and_change_nothing(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    record = finish(ota_env, job(api, model(), firmware), "done")
    created = {**record, "type": "job.created"}
    assert post_event(reporting, created).status_code == 400  # not a type it takes
    no_job = {k: v for k, v in record.items() if k != "job_id"}
    answer = post_event(reporting, no_job, "objectflow.ota.job.completed.v1")
    assert answer.status_code == 422 and answer.json()["field"] == "job_id"
    plain = reporting.post("/", json=record)  # no CloudEvent at all
    assert plain.status_code == 400
    assert daily(ota_env, "firmware", firmware) is None
    assert (
        sql(ota_env, "SELECT 1 FROM ota.report_jobs WHERE job_id = %s", (record["job_id"],)) == []
    )


# --- the cache ------------------------------------------------------------------------------


def test_the_summary_is_cached_until_the_next_event(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    device = model()
    assert (
        post_event(reporting, finish(ota_env, job(api, device, firmware), "done")).status_code
        == 204
    )
    params = {"firmware": firmware, "from": T0.date().isoformat()}
    assert reporting.get("/reports/summary", params=params).json()["totals"]["finished"] == 1
    # A change no event announced stays unseen: the answer comes from Redis.
    sql(ota_env, "UPDATE ota.report_daily SET succeeded = 40 WHERE key = %s", (firmware,))
    assert reporting.get("/reports/summary", params=params).json()["totals"]["finished"] == 1
    generation = int(clients.redis.call(lambda r: r.get(reports.GENERATION_KEY)))
    cached = clients.redis.call(lambda r: r.keys(f"ota:reports:summary:{generation}:*"))
    assert cached and 0 < clients.redis.call(lambda r: r.ttl(cached[0])) <= 300
    # Any event moves the generation: the next answer is read afresh.
    assert (
        post_event(reporting, finish(ota_env, job(api, device, firmware), "error")).status_code
        == 204
    )
    totals = reporting.get("/reports/summary", params=params).json()["totals"]
    assert (totals["succeeded"], totals["failed"]) == (40, 1)


# --- the CSV --------------------------------------------------------------------------------


def test_the_csv_has_one_row_per_job_with_its_final_status_and_duration(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    device = model()
    done = finish(ota_env, job(api, device, firmware), "done", 7.5)
    failed = finish(ota_env, job(api, device, firmware), "error", 3.25)
    waiting = job(api, device, firmware)
    assert post_event(reporting, done).status_code == 204  # counted or not, the CSV is the same
    rows = csv_rows(reporting.get("/reports/jobs.csv", params={"firmware": firmware}))
    assert [r["job_id"] for r in rows] == [done["job_id"], failed["job_id"], waiting["id"]]
    by_id = {r["job_id"]: r for r in rows}
    assert by_id[done["job_id"]]["status"] == "done"
    assert by_id[done["job_id"]]["duration_s"] == "7.5"
    assert by_id[done["job_id"]]["dispatched_at"] == T0.isoformat().replace("+00:00", "Z")
    assert (by_id[failed["job_id"]]["status"], by_id[failed["job_id"]]["duration_s"]) == (
        "error", "3.25")  # fmt: skip
    assert by_id[waiting["id"]]["status"] == "scheduled"
    assert by_id[waiting["id"]]["finished_at"] == by_id[waiting["id"]]["duration_s"] == ""
    assert {r["device_id"] for r in rows} == {device} and {r["model"] for r in rows} == {
        model.model
    }

    only_done = reporting.get("/reports/jobs.csv", params={"firmware": firmware, "status": "done"})
    assert [r["job_id"] for r in csv_rows(only_done)] == [done["job_id"]]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    none = reporting.get("/reports/jobs.csv", params={"firmware": firmware, "from": later})
    assert csv_rows(none) == [] and none.text.startswith("job_id,device_id,")


def test_the_csv_is_read_in_batches(
    api: Any, reporting: Any, firmware: str, model: Any, ota_env: dict[str, str]
) -> None:
    os.environ["OTA_REPORTS_CSV_BATCH"] = "2"
    settings.reset()
    device = model()
    made = [job(api, device, firmware)["id"] for _ in range(5)]
    rows = csv_rows(reporting.get("/reports/jobs.csv", params={"firmware": firmware}))
    assert [r["job_id"] for r in rows] == made


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "last tuesday"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "to"),
        ({"status": "finished"}, "status"),
        ({"firmware": "bad version!"}, "firmware"),
        ({"rollout_id": "not-a-uuid"}, "rollout_id"),
    ],
)
def test_bad_csv_filters_are_a_422_naming_the_field(
    reporting: Any, params: dict[str, str], field: str
) -> None:
    answer = reporting.get("/reports/jobs.csv", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and answer.json()["error"]


def test_bad_summary_dates_are_a_422(reporting: Any) -> None:
    for params, field in (({"from": "soon"}, "from"), ({"to": "2026-03-01T10:00:00Z"}, "to")):
        answer = reporting.get("/reports/summary", params=params)
        assert answer.status_code == 422 and answer.json()["field"] == field


# --- the analytical pool --------------------------------------------------------------------


def test_analytical_queries_run_read_only_under_the_statement_timeout(ota_env: Any) -> None:
    os.environ["OTA_REPORTS_STATEMENT_TIMEOUT_MS"] = "200"
    settings.reset()
    reports.reset()
    with reports.analytical() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == ("200ms",)
    with pytest.raises(reports.QueryTimeout) as caught, reports.analytical() as cur:
        cur.execute("SELECT pg_sleep(2)")
    assert caught.value.status == 503 and caught.value.code == "query-timeout"
    with pytest.raises(errors.ReadOnlySqlTransaction), reports.analytical() as cur:
        cur.execute("DELETE FROM ota.report_daily WHERE key = 'none'")
    reports.reset()


def test_a_read_replica_dsn_takes_the_analytical_queries(ota_env: Any) -> None:
    replica = f"{settings.postgres().dsn}?application_name=ota-reports-replica"
    os.environ["OTA_REPORTS_DATABASE_URL"] = replica
    settings.reset()
    reports.reset()
    with reports.analytical() as cur:
        cur.execute("SELECT current_setting('application_name')")
        assert cur.fetchone() == ("ota-reports-replica",)
    reports.reset()


# --- a rollout: the PDF and the dashboard ---------------------------------------------------


@pytest.fixture
def waiting_rollout(api: Any, firmware: str, model: Any) -> dict[str, Any]:
    """A rollout whose devices' maintenance window opens 12 hours from now: nothing is
    released while the test runs (the running ota-rollouts steps it too)."""
    devices = [model() for _ in range(4)]
    clients.postgres.transaction(
        lambda cur: cur.execute(  # online: a rollout releases only those
            "UPDATE ota.devices SET last_seen = now() WHERE device_id = ANY(%s)", (devices,)
        )
    )
    hour = (datetime.now(UTC).hour + 12) % 24
    answer = api.post("/rollouts", json={
        "firmware_version": firmware, "devices": devices, "waves": [50, 100],
        "maintenance_window": {"cron": f"0 {hour} * * *", "duration_minutes": 5}})  # fmt: skip
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_the_rollout_pdf_holds_its_counts_and_is_cached_until_an_event(
    api: Any, reporting: Any, waiting_rollout: dict[str, Any], tmp_path: Path
) -> None:
    rid = waiting_rollout["id"]
    generation = clients.redis.call(lambda r: r.get("ota:reports:generation"))
    first = reporting.get(f"/reports/rollouts/{rid}.pdf")
    assert first.status_code == 200 and first.headers["content-type"] == "application/pdf"
    text = pdf_text(first.content, tmp_path)
    shown = api.get(f"/rollouts/{rid}").json()
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert rid in text and f"pending {shown['counts']['pending']}" in lines
    assert shown["counts"]["pending"] == 4 and "1 50% 2 running 0 0 0 0 2 0" in lines
    second = reporting.get(f"/reports/rollouts/{rid}.pdf").content
    if clients.redis.call(lambda r: r.get("ota:reports:generation")) == generation:
        # cached, unless a running runtime's event came since before the first request
        assert second == first.content
    paused = {"event_id": str(uuid.uuid4()), "type": "rollout.paused", "rollout_id": rid,
              "firmware_version": shown["firmware_version"], "status": "paused", "version": 2,
              "wave": 1, "reason": "held for the test", "occurred_at": T0.isoformat()}  # fmt: skip
    assert post_event(reporting, paused).status_code == 204
    again = pdf_text(reporting.get(f"/reports/rollouts/{rid}.pdf").content, tmp_path)
    assert "held for the test" in again  # the event made the cached PDF stale


def test_an_unknown_rollout_has_no_pdf(reporting: Any) -> None:
    for rid in (str(uuid.uuid4()), "no-such-rollout"):
        answer = reporting.get(f"/reports/rollouts/{rid}.pdf")
        assert answer.status_code == 404 and answer.json()["field"] == "rollout_id"


def test_the_dashboard_pages_render_server_side(
    api: Any, reporting: Any, waiting_rollout: dict[str, Any], firmware: str, model: Any,
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    rid = waiting_rollout["id"]
    index = reporting.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert f'href="/rollouts/{rid}"' in index.text
    page = reporting.get(f"/rollouts/{rid}").text
    assert '<tr data-wave="1" data-done="0" data-failed="0" data-size="2">' in page
    assert f'action="/rollouts/{rid}/pause"' in page and f'action="/rollouts/{rid}/cancel"' in page
    assert f'name="version" value="{waiting_rollout["version"]}"' in page
    assert f'href="/reports/rollouts/{rid}.pdf"' in page
    assert f'href="/reports/jobs.csv?rollout_id={rid}"' in page
    record = finish(ota_env, job(api, model(), firmware), "error")
    history = reporting.get(f"/jobs/{record['job_id']}").text
    assert history.count("<td>job.completed</td>") == 1 and "<td>job.created</td>" in history
    assert reporting.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert reporting.get(f"/rollouts/{uuid.uuid4()}").status_code == 404


def test_a_button_without_its_version_changes_nothing(
    api: Any, reporting: Any, waiting_rollout: dict[str, Any]
) -> None:
    rid = waiting_rollout["id"]
    before = api.get(f"/rollouts/{rid}").json()
    missing = reporting.post(f"/rollouts/{rid}/pause", data={})
    assert missing.status_code == 422 and missing.json()["field"] == "version"
    unknown = reporting.post(f"/rollouts/{rid}/explode", data={"version": "1"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "action"
    after = api.get(f"/rollouts/{rid}").json()
    assert (after["status"], after["version"]) == (before["status"], before["version"])
