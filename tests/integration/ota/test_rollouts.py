"""Rollouts against the real PostgreSQL: ota-api's routes (every bad input a specific 4xx that
writes nothing; If-Match as for jobs), and ota-rollouts' decisions (functions/ota/advance.py
run in-process; job outcomes set in SQL, as ota-status would have set them).

The running runtime's scheduler and dispatcher may take the released jobs meanwhile (and its
ota-rollouts step the same rollouts): tests assert states, never who reached them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from functions.ota import advance, rollouts
from functions.runtime import clients
from tests.ota_support import sql, unique
from tests.support import wait_for


def rollout_rows(env: dict[str, str], firmware: str, devices: list[str]) -> tuple[int, int, int]:
    """(rollouts of the firmware, rollout_devices of the devices, rollout outbox rows)."""
    (row,) = sql(
        env,
        """
        SELECT (SELECT count(*) FROM ota.rollouts WHERE firmware_version = %s),
               (SELECT count(*) FROM ota.rollout_devices WHERE device_id = ANY(%s)),
               (SELECT count(*) FROM ota.event_outbox WHERE aggregate_type = 'rollout'
                AND payload->>'firmware_version' = %s)
        """,
        (firmware, devices, firmware),
    )
    return row


def jobs_of(env: dict[str, str], rollout_id: str) -> dict[str, tuple[str, str]]:
    """device id -> (job id, status) of the rollout's current jobs."""
    rows = sql(env, "SELECT rd.device_id, j.id::text, j.status FROM ota.rollout_devices rd "
               "JOIN ota.jobs j ON j.id = rd.job_id WHERE rd.rollout_id = %s",
               (rollout_id,))  # fmt: skip
    return {device: (job, status) for device, job, status in rows}


def finish(env: dict[str, str], job_ids: list[str], status: str) -> None:
    sql(env, "UPDATE ota.jobs SET status = %s, version = version + 1, deadline_at = NULL "
        "WHERE id = ANY(%s::uuid[])", (status, job_ids))  # fmt: skip


@pytest.fixture
def fleet(device: Callable[..., str], ota_env: dict[str, str]) -> Callable[..., list[str]]:
    """`count` registered devices, online (seen now, as their heartbeats would have made them:
    a rollout releases online devices only)."""

    def make(count: int, timezone: str = "Europe/Berlin") -> list[str]:
        made = [device(timezone) for _ in range(count)]
        sql(ota_env, "UPDATE ota.devices SET last_seen = now() WHERE device_id = ANY(%s)",
            (made,))  # fmt: skip
        return made

    return make


def test_a_rollout_is_created_with_its_waves_and_an_outbox_row(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    devices = fleet(10)
    answer = api.post("/rollouts", json={"firmware_version": firmware, "devices": devices,
                                         "waves": [10, 50, 100]})  # fmt: skip
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["etag"] == f'"{body["version"]}"'
    assert body["status"] == "running" and body["version"] == 1 and body["current_wave"] == 1
    assert [(w["percent"], w["devices"]) for w in body["waves"]] == [
        (10, devices[:1]), (50, devices[1:5]), (100, devices[5:])]  # fmt: skip
    assert body["waves"][0]["counts"]["pending"] <= 1 and body["counts"]["pending"] <= 10
    assert body["success_threshold"] == 95 and body["abort"] == {"failure_percent": 10,
                                                                 "min_finished": 10}  # fmt: skip
    assert api.get(f"/rollouts/{body['id']}").json()["id"] == body["id"]
    rows = sql(ota_env, "SELECT device_id, wave FROM ota.rollout_devices WHERE rollout_id = %s "
               "ORDER BY position", (body["id"],))  # fmt: skip
    assert rows == [(d, 0 if n < 1 else 1 if n < 5 else 2) for n, d in enumerate(devices)]
    (event,) = sql(ota_env, "SELECT event_type, partition_key, payload FROM ota.event_outbox "
                   "WHERE aggregate_id = %s", (body["id"],))  # fmt: skip
    assert event[:2] == ("rollout.created", body["id"])
    assert event[2]["status"] == "running" and event[2]["wave"] == 1


def test_a_selector_takes_the_matching_devices_in_id_order(
    api: Any, firmware: str, ota_env: dict[str, str]
) -> None:
    model = unique("model")
    devices = sorted(unique("dev") for _ in range(3))
    for device_id in reversed(devices):
        api.put(f"/devices/{device_id}", json={"model": model, "timezone": "UTC"})
    answer = api.post("/rollouts", json={"firmware_version": firmware,
                                         "selector": {"model": model}})  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert answer.json()["device_count"] == 3
    assert answer.json()["waves"][-1]["devices"][-1] == devices[-1]
    rows = sql(ota_env, "SELECT device_id FROM ota.rollout_devices WHERE rollout_id = %s "
               "ORDER BY position", (answer.json()["id"],))  # fmt: skip
    assert [r[0] for r in rows] == devices


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"waves": [10, 5, 100]}, "waves", "ascend"),
        ({"waves": [10, 10, 100]}, "waves", "ascend"),
        ({"waves": [10, 120]}, "waves", "less than or equal to 100"),
        ({"waves": [10, 50]}, "waves", "last wave must be 100"),
        ({"waves": []}, "waves", "at least 1"),
        ({"devices": []}, "devices", "at least 1"),
        ({"success_threshold": 0}, "success_threshold", "greater than 0"),
        ({"success_threshold": 101}, "success_threshold", "less than or equal to 100"),
        ({"abort": {"failure_percent": -1}}, "abort.failure_percent", "greater than or equal"),
        ({"maintenance_window": {"cron": "0 25 * * *", "duration_minutes": 60}},
         "maintenance_window", "cron"),
        ({"maintenance_window": {"cron": "0 2 * *", "duration_minutes": 60}},
         "maintenance_window", "cron"),
        ({"maintenance_window": {"cron": "0 2 * * *", "duration_minutes": 0}},
         "maintenance_window.duration_minutes", "greater than or equal to 1"),
        ({"selector": {"model": "x"}}, None, "not both"),
        ({"max_per_minute": 0}, "max_per_minute", "greater than or equal to 1"),
        ({"ramp": {"base_per_minute": 10, "factor": 0.5, "every_succeeded": 5}},
         "ramp.factor", "greater than or equal to 1"),
        ({"firmware_version": "fw-none-such"}, "firmware_version", "unknown firmware"),
        ({"devices": ["no-such-device-x1"]}, "devices", "unknown device 'no-such-device-x1'"),
    ],
)  # fmt: skip
def test_bad_input_is_a_specific_4xx_and_writes_nothing(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str],
    change: dict[str, Any], field: str | None, words: str,
) -> None:  # fmt: skip
    devices = fleet(2)
    body = {"firmware_version": firmware, "devices": devices, **change}
    before = rollout_rows(ota_env, body["firmware_version"], devices)
    answer = api.post("/rollouts", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert words in error["detail"], error
    if field is not None:
        assert error.get("field", "").startswith(field), error
    assert rollout_rows(ota_env, body["firmware_version"], devices) == before == (0, 0, 0)


def test_an_empty_selector_match_is_refused(api: Any, firmware: str) -> None:
    answer = api.post("/rollouts", json={"firmware_version": firmware,
                                         "selector": {"model": unique("none")}})  # fmt: skip
    assert answer.status_code == 422 and answer.json()["field"] == "selector", answer.text
    assert "no device matches" in answer.json()["detail"]


def test_waves_run_in_order_pause_on_failures_and_resume(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    devices = fleet(10)
    spec = {"firmware_version": firmware, "devices": devices, "waves": [10, 50, 100],
            "abort": {"failure_percent": 30, "min_finished": 2}}  # fmt: skip
    rollout = api.post("/rollouts", json=spec).json()
    rid = rollout["id"]

    def state() -> dict[str, Any]:
        advance.advance(rid)
        return api.get(f"/rollouts/{rid}").json()

    # wave 1: the first device only
    wait_for(lambda: state() and set(jobs_of(ota_env, rid)) == {devices[0]},
             what="wave 1 released")  # fmt: skip
    assert state()["current_wave"] == 1 and set(jobs_of(ota_env, rid)) == {devices[0]}
    finish(ota_env, [jobs_of(ota_env, rid)[devices[0]][0]], "done")
    # wave 2 starts (its 4 devices released), wave 3 does not
    wait_for(lambda: state()["current_wave"] == 2 and len(jobs_of(ota_env, rid)) == 5,
             what="wave 2 released")  # fmt: skip
    assert set(jobs_of(ota_env, rid)) == set(devices[:5])
    wave2 = [jobs_of(ota_env, rid)[d][0] for d in devices[1:5]]
    finish(ota_env, wave2[:2], "error")
    paused = wait_for(lambda: (s := state())["status"] == "paused" and s, what="paused")
    assert paused["reason"] == ("wave 2: 2 of 2 finished jobs failed (error or timed_out), "
                                "over abort.failure_percent 30%")  # fmt: skip
    assert paused["waves"][1]["status"] == "paused" and paused["waves"][2]["status"] == "pending"
    events = [r[0] for r in sql(ota_env, "SELECT event_type FROM ota.event_outbox WHERE "
              "aggregate_id = %s ORDER BY id", (rid,))]  # fmt: skip
    assert events == ["rollout.created", "rollout.wave_started", "rollout.paused"]
    # paused: the undispatched jobs of wave 2 were withdrawn (their devices pending again),
    # and nothing is released while it stays paused
    kept = jobs_of(ota_env, rid)
    withdrawn = [d for d in devices[1:5] if d not in kept]
    assert paused["counts"]["pending"] == len(withdrawn) + 5
    assert state()["status"] == "paused" and jobs_of(ota_env, rid) == kept

    assert api.post(f"/rollouts/{rid}/resume").status_code == 428
    stale = api.post(f"/rollouts/{rid}/resume", headers={"If-Match": "1"})
    assert stale.status_code == 412 and stale.json()["rollout"]["version"] == paused["version"]
    resumed = api.post(f"/rollouts/{rid}/resume", headers={"If-Match": str(paused["version"])})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "running" and resumed.json()["reason"] is None
    again = api.post(f"/rollouts/{rid}/resume", headers={"If-Match": resumed.headers["etag"]})
    assert again.status_code == 409 and again.json()["error"] == "rollout-conflict"
    # wave 2 was accepted: its withdrawn devices are released again, and once all of it has
    # finished wave 3 starts; once its jobs are done, the rollout is done
    wait_for(lambda: state() and set(jobs_of(ota_env, rid)) == set(devices[:5]),
             what="wave 2 released again")  # fmt: skip
    assert state()["current_wave"] == 2
    finish(ota_env, [jobs_of(ota_env, rid)[d][0] for d in devices[3:5]], "done")
    wait_for(lambda: state() and len(jobs_of(ota_env, rid)) == 10, what="wave 3 released")
    finish(ota_env, [jobs_of(ota_env, rid)[d][0] for d in devices[5:]], "done")
    done = wait_for(lambda: (s := state())["status"] == "done" and s, what="rollout done")
    assert done["counts"]["done"] == 8 and done["counts"]["error"] == 2
    assert [w["status"] for w in done["waves"]] == ["done", "done", "done"]
    job = api.get(f"/jobs/{jobs_of(ota_env, rid)[devices[9]][0]}").json()
    assert job["rollout_id"] == rid


def test_a_pause_withdraws_undispatched_jobs_and_a_cancel_reports_dispatched_ones(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    devices = fleet(4)
    rollout = api.post("/rollouts", json={"firmware_version": firmware, "devices": devices,
                                          "waves": [100]}).json()  # fmt: skip
    rid = rollout["id"]
    wait_for(lambda: advance.advance(rid) and len(jobs_of(ota_env, rid)) == 4, what="released")
    released = jobs_of(ota_env, rid)
    sql(ota_env, "UPDATE ota.jobs SET status = 'dispatched', version = version + 1 "
        "WHERE id = %s", (released[devices[0]][0],))  # fmt: skip
    finish(ota_env, [released[devices[1]][0]], "done")
    sql(ota_env, "UPDATE ota.jobs SET status = 'scheduled', version = version + 1 "
        "WHERE id = ANY(%s::uuid[])", ([released[d][0] for d in devices[2:]],))  # fmt: skip

    current = api.get(f"/rollouts/{rid}").json()
    pauses = {"by": "operator"}  # the counter ObjectflowOTARolloutPaused reads (by abort|threshold)
    before = REGISTRY.get_sample_value("objectflow_ota_rollout_pauses_total", pauses)
    paused = api.post(f"/rollouts/{rid}/pause", json={"reason": "night shift"},
                      headers={"If-Match": f'"{current["version"]}"'})  # fmt: skip
    assert paused.status_code == 200, paused.text
    assert REGISTRY.get_sample_value("objectflow_ota_rollout_pauses_total", pauses) == before + 1
    assert paused.json()["status"] == "paused" and paused.json()["reason"] == "night shift"
    assert paused.json()["counts"]["pending"] == 2  # withdrawn, released again on resume
    later = [released[d][0] for d in devices[2:]]
    withdrawn = sql(ota_env, "SELECT status, status_reason FROM ota.jobs "
                    "WHERE id = ANY(%s::uuid[])", (later,))  # fmt: skip
    assert withdrawn == [("cancelled", "rollout paused: night shift")] * 2

    cancelled = api.post(f"/rollouts/{rid}/cancel", headers={"If-Match": paused.headers["etag"]})
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["cancellation"] == {
        "cancelled_jobs": 0,
        "not_started": 2,
        "dispatched": [{"job_id": released[devices[0]][0], "device_id": devices[0],
                        "status": "dispatched"}],
    }  # fmt: skip
    assert body["counts"]["cancelled"] == 2 and body["counts"]["done"] == 1
    assert body["counts"]["dispatched"] == 1 and body["counts"]["pending"] == 0
    again = api.post(f"/rollouts/{rid}/cancel", headers={"If-Match": cancelled.headers["etag"]})
    assert again.status_code == 409
    advance.advance(rid)
    assert len(jobs_of(ota_env, rid)) == 2  # a cancelled rollout releases nothing


def test_a_cancel_cancels_released_jobs_not_yet_dispatched(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    devices = fleet(3)
    rid = api.post("/rollouts", json={"firmware_version": firmware, "devices": devices,
                                      "waves": [100]}).json()["id"]  # fmt: skip
    wait_for(lambda: advance.advance(rid) and len(jobs_of(ota_env, rid)) == 3, what="released")
    ids = [job for job, _ in jobs_of(ota_env, rid).values()]
    sql(ota_env, "UPDATE ota.jobs SET status = 'ready', version = version + 1 "
        "WHERE id = ANY(%s::uuid[])", (ids,))  # fmt: skip
    version = api.get(f"/rollouts/{rid}").json()["version"]
    body = api.post(f"/rollouts/{rid}/cancel", headers={"If-Match": str(version)}).json()
    assert body["cancellation"] == {"cancelled_jobs": 3, "not_started": 0, "dispatched": []}
    assert body["counts"]["cancelled"] == 3
    listed = api.get("/jobs", params={"rollout_id": rid, "status": "cancelled"}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert api.get("/jobs", params={"rollout_id": "not-a-uuid"}).json()["jobs"] == []


def test_max_per_minute_releases_a_burst_then_waits(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    devices = fleet(5)
    spec = {"firmware_version": firmware, "devices": devices, "max_per_minute": 12}
    rid = api.post("/rollouts", json={**spec, "waves": [100]}).json()["id"]
    advance.advance(rid)
    advance.advance(rid)
    assert len(jobs_of(ota_env, rid)) == 2  # the bucket holds 10 s of 12/min


def test_a_paced_rollouts_fleet_coming_online_after_its_start_is_released_at_its_pace(
    api: Any, firmware: str, device: Callable[..., str], ota_env: dict[str, str]
) -> None:
    """A fleet whose heartbeats arrive after the rollout was created: the pace its creation
    started (ota-rollouts on rollout.created) steps on while devices wait, online or not, so
    each is released as it comes online, not at the next minute's tick."""
    devices = [device() for _ in range(4)]  # registered, never seen: offline
    spec = {"firmware_version": firmware, "devices": devices, "max_per_minute": 600}
    rid = api.post("/rollouts", json={**spec, "waves": [100]}).json()["id"]

    def waiting(cur: Any) -> list[str]:
        return rollouts.waiting_for_pace(cur, rollout_id=rid)

    assert rid not in clients.postgres.transaction(rollouts.waiting_for_pace)  # online only
    assert clients.postgres.transaction(waiting) == [rid]
    pacing = threading.Thread(target=advance.pace, args=(time.monotonic() + 6, rid))
    pacing.start()
    try:
        time.sleep(1.0)
        assert jobs_of(ota_env, rid) == {}  # offline devices wait
        sql(ota_env, "UPDATE ota.devices SET last_seen = now() WHERE device_id = ANY(%s)",
            (devices,))  # fmt: skip
        wait_for(lambda: len(jobs_of(ota_env, rid)) == 4, timeout=4, what="released")
    finally:
        pacing.join()
    assert clients.postgres.transaction(waiting) == []


def test_devices_outside_their_maintenance_window_wait(
    api: Any, firmware: str, fleet: Callable[..., list[str]], ota_env: dict[str, str]
) -> None:
    later = (datetime.now(UTC).hour + 12) % 24  # a window twelve hours away, in UTC
    inside, outside = fleet(2, "Asia/Kolkata"), fleet(2, "UTC")
    window = {"cron": f"0 {later} * * *", "duration_minutes": 60}
    spec = {"firmware_version": firmware, "waves": [100]}
    rid = api.post("/rollouts", json={**spec, "devices": outside,
                                      "maintenance_window": window}).json()["id"]  # fmt: skip
    advance.advance(rid)
    assert jobs_of(ota_env, rid) == {}
    assert api.get(f"/rollouts/{rid}").json()["counts"]["pending"] == 2
    always = {"cron": "* * * * *", "duration_minutes": 5}
    rid = api.post("/rollouts", json={**spec, "devices": inside,
                                      "maintenance_window": always}).json()["id"]  # fmt: skip
    wait_for(lambda: advance.advance(rid) and len(jobs_of(ota_env, rid)) == 2, what="released")
