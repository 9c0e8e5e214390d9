"""Rollouts end to end (issue 17): simulated devices (devstack/ota/sim.py) take a rollout
through the real pipeline — ota-api -> outbox -> job.events -> ota-rollouts (releases a wave's
devices as jobs) -> ota-scheduler -> ota-dispatcher -> MQTT -> device -> ota-status ->
job.completed -> ota-rollouts (the gate, the abort rule) — while a second MQTT subscriber
records every command with the instant it was issued.

- healthy devices: the rollout finishes, and no device of wave n+1 got a command before wave
  n's done jobs had reached the success threshold;
- failing devices in wave 2: it pauses itself with the reason, sends nothing while paused (its
  minute tick run by hand changes nothing), and goes on to the end on POST /resume;
- cancel: jobs not yet dispatched are cancelled, the dispatched ones reported and left to end;
- pacing: `max_per_minute: 120` spreads the commands as asked, timed where they arrive.

`make test` runs 40 devices per rollout (60 for pacing), `make chaos` 300."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import requests

from devstack.ota import sim
from devstack.runtime import ticker
from functions.ota import waves as pacing
from tests.e2e.conftest import OVERLAY
from tests.ota_support import Commands, sql
from tests.support import s3_client, scaled, wait_for

WAVES = [1, 10, 100]  # waves of 1, 3, 36 devices in `make test`; 3, 27, 270 in `make chaos`


def fleet(ota_api: str, count: int) -> tuple[list[str], str]:
    """`count` registered devices and a firmware, unique to the test."""
    run = uuid.uuid4().hex[:8]
    devices = [f"rollout-{run}-{n:04d}" for n in range(count)]
    assert asyncio.run(sim.register(ota_api, devices)) == []
    version = f"fw-rollout-{run}"
    upload = requests.put(f"{ota_api}/firmwares/{version}", data=b"\x7fFW" * 5_000, timeout=10)
    assert upload.status_code == 201, upload.text
    return devices, version


@contextmanager
def running(devices: list[str], env: dict[str, str], behaviour: sim.Behaviour) -> Iterator[Any]:
    broker = sim.Broker("127.0.0.1", 1883, env["MQTT_USER"], env["MQTT_PASSWORD"])
    stats, stop = sim.Stats(), threading.Event()
    runner = threading.Thread(target=lambda: asyncio.run(
        sim.simulate(devices, broker, behaviour, stats, until=stop.is_set)))  # fmt: skip
    commands = Commands(devices)
    runner.start()
    try:
        wait_for(lambda: stats.connected == len(devices), timeout=60, what="devices connected")
        yield commands
    finally:
        stop.set()
        runner.join(timeout=30)
        commands.close()


def rollout(ota_api: str, rollout_id: str) -> dict[str, Any]:
    answer = requests.get(f"{ota_api}/rollouts/{rollout_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def issued(commands: Commands, devices: list[str]) -> list[datetime]:
    return [datetime.fromisoformat(c["issued_at"]) for d in devices for c in commands.of(d)]


def whole(moment: datetime) -> datetime:
    """`moment` at the commands' precision (issued_at has whole seconds)."""
    return moment.replace(microsecond=0)


def done_times(env: dict[str, str], rollout_id: str, devices: list[str]) -> list[datetime]:
    """When each of the devices' jobs of the rollout became done, in order."""
    rows = sql(env, "SELECT e.occurred_at FROM ota.job_events e JOIN ota.jobs j ON j.id = e.job_id "
               "WHERE j.rollout_id = %s AND j.device_id = ANY(%s) AND e.type = 'status.applied' "
               "AND e.status = 'done' ORDER BY 1", (rollout_id, devices))  # fmt: skip
    return [row[0] for row in rows]


@pytest.mark.chaos
def test_a_healthy_rollout_runs_its_waves_in_order(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    devices, version = fleet(ota_api, scaled(40, 300))
    with running(devices, stack_env, sim.Behaviour(firmware_ms=100, seed=3)) as commands:
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": WAVES})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        done = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "done" and r,
                        timeout=120, interval=0.5, what="the rollout done")  # fmt: skip
    assert done["counts"]["done"] == len(devices)
    assert [w["status"] for w in done["waves"]] == ["done"] * 3
    waves = [w["devices"] for w in done["waves"]]
    assert [w["counts"]["done"] for w in done["waves"]] == [len(w) for w in waves]
    assert [d for wave in waves for d in wave] == devices  # in the order given
    for earlier, later in itertools.pairwise(waves):
        needed = math.ceil(len(earlier) * 0.95)
        passed_at = done_times(stack_env, rid, earlier)[needed - 1]
        # a command's issued_at has whole seconds (functions/ota/command.py): compare at that
        # precision, and the release of the later wave's jobs at full precision
        first_command = min(issued(commands, later))
        assert first_command >= whole(passed_at), (first_command, passed_at)
        (released,) = sql(stack_env, "SELECT min(created_at) FROM ota.jobs WHERE rollout_id = %s "
                          "AND device_id = ANY(%s)", (rid, later))[0]  # fmt: skip
        assert released > passed_at, (released, passed_at)
    kinds = [r[0] for r in sql(stack_env, "SELECT event_type FROM ota.event_outbox WHERE "
             "aggregate_id = %s ORDER BY id", (rid,))]  # fmt: skip
    assert kinds == ["rollout.created", "rollout.wave_started", "rollout.wave_started",
                     "rollout.completed"]  # fmt: skip


@pytest.mark.chaos
def test_failures_in_wave_2_pause_the_rollout_until_it_is_resumed(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    devices, version = fleet(ota_api, scaled(40, 300))
    first, second = (math.ceil(len(devices) * p / 100) for p in WAVES[:2])
    wave2, wave3 = devices[first:second], devices[second:]  # what the rollout will show
    failing = frozenset(wave2[: int(len(wave2) * 0.4)])  # 40% of wave 2
    behaviour = sim.Behaviour(firmware_ms=100, fail_devices=failing, seed=4)
    with running(devices, stack_env, behaviour) as commands:
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": WAVES,
            "abort": {"failure_percent": 20, "min_finished": 3}})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        paused = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "paused" and r,
                          timeout=90, interval=0.3, what="the rollout paused")  # fmt: skip
        assert (
            paused["reason"].startswith("wave 2: ")
            and "abort.failure_percent 20%" in (paused["reason"])
        )
        assert [paused["waves"][1]["devices"], paused["waves"][2]["devices"]] == [wave2, wave3]
        waiting = paused["waves"][2]["counts"]  # pending, or offline until a heartbeat counted
        assert paused["current_wave"] == 2 and waiting["pending"] + waiting["offline"] == len(wave3)

        # paused: what was dispatched ends, nothing more is sent, even by a tick
        in_flight = ("ready", "scheduled", "dispatched", "downloading", "flashing")
        wait_for(lambda: not any(rollout(ota_api, rid)["counts"][s] for s in in_flight),
                 timeout=60, interval=0.3, what="wave 2's dispatched jobs finished")  # fmt: skip
        sent = len(issued(commands, devices))
        assert all(r.status < 300 for r in ticker.run_by_hand("ota-rollouts-tick", [OVERLAY]))
        still = rollout(ota_api, rid)
        assert still["status"] == "paused" and issued(commands, wave3) == []
        assert len(issued(commands, devices)) == sent

        resumed = requests.post(f"{ota_api}/rollouts/{rid}/resume", timeout=10,
                                headers={"If-Match": str(still["version"])})  # fmt: skip
        assert resumed.status_code == 200, resumed.text
        done = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "done" and r,
                        timeout=120, interval=0.5, what="done after resuming")  # fmt: skip
    assert done["counts"]["error"] == len(failing)
    assert done["counts"]["done"] == len(devices) - len(failing)
    resumed_at = datetime.fromisoformat(resumed.json()["updated_at"])
    assert min(issued(commands, wave3)) >= whole(resumed_at)


def test_tampered_firmware_is_refused_by_every_device_and_pauses_the_rollout(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    """Someone who can write the firmware bucket and the database, but holds no signing key,
    swaps the object and its row's digest: the sha256 check passes on every device, the
    signature does not. Each device that gets the command reports error (nothing flashed), and
    the abort rule pauses the rollout."""
    devices, version = fleet(ota_api, scaled(12, 100))
    evil = b"\x7fEVIL" * 4_000
    [(key,)] = sql(stack_env, "SELECT object_key FROM ota.firmwares WHERE version = %s",
                   (version,))  # fmt: skip
    s3_client(stack_env).put_object(Bucket="firmware", Key=key, Body=evil)
    sql(stack_env, "UPDATE ota.firmwares SET sha256 = %s, size = %s WHERE version = %s",
        (hashlib.sha256(evil).hexdigest(), len(evil), version))  # fmt: skip
    with running(devices, stack_env, sim.Behaviour(firmware_ms=50, seed=8)):
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": [100],
            "abort": {"failure_percent": 20, "min_finished": 3}})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        paused = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "paused" and r,
                          timeout=90, interval=0.3, what="the rollout paused")  # fmt: skip
        assert "abort.failure_percent 20%" in paused["reason"]
        in_flight = ("ready", "scheduled", "dispatched", "downloading", "flashing")
        wait_for(lambda: not any(rollout(ota_api, rid)["counts"][s] for s in in_flight),
                 timeout=60, interval=0.3, what="the dispatched jobs finished")  # fmt: skip
    counts = rollout(ota_api, rid)["counts"]
    assert counts["done"] == 0 and counts["error"] >= 3
    reported = sql(stack_env, "SELECT s.error, count(*) FROM ota.device_statuses s JOIN "
                   "ota.rollout_devices rd ON rd.job_id = s.job_id WHERE rd.rollout_id = %s "
                   "AND s.status = 'error' GROUP BY 1", (rid,))  # fmt: skip
    assert reported == [("signature mismatch", counts["error"])]
    current = sql(stack_env, "SELECT count(*) FROM ota.devices WHERE device_id = ANY(%s) "
                  "AND current_firmware = %s", (devices, version))  # fmt: skip
    assert current == [(0,)]


@pytest.mark.chaos
def test_a_cancel_stops_the_jobs_not_yet_dispatched(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    devices, version = fleet(ota_api, scaled(40, 300))
    with running(devices, stack_env, sim.Behaviour(firmware_ms=4000, seed=5)) as commands:
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": [100],
            "max_per_minute": 30})  # a burst of 5, then one every 2 s  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        wait_for(lambda: rollout(ota_api, rid)["counts"]["downloading"]
                 + rollout(ota_api, rid)["counts"]["flashing"] >= 3,
                 timeout=60, interval=0.3, what="jobs with their devices")  # fmt: skip
        current = rollout(ota_api, rid)
        cancelled = requests.post(f"{ota_api}/rollouts/{rid}/cancel", timeout=10,
                                  headers={"If-Match": str(current["version"])})  # fmt: skip
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        report = body["cancellation"]
        dispatched = {j["device_id"] for j in report["dispatched"]}
        assert len(dispatched) >= 3 and report["not_started"] > 0
        assert report["not_started"] + report["cancelled_jobs"] + len(dispatched) + body["counts"][
            "done"
        ] + body["counts"]["error"] == len(devices)
        # the dispatched ones run to their end; nobody else gets a command
        wait_for(lambda: rollout(ota_api, rid)["counts"]["done"] >= len(dispatched),
                 timeout=60, interval=0.3, what="the dispatched jobs done")  # fmt: skip
        ticker.run_by_hand("ota-rollouts-tick", [OVERLAY])
        final = rollout(ota_api, rid)
        for device_id in set(devices) - dispatched:
            if commands.of(device_id):
                assert sql(stack_env, "SELECT 1 FROM ota.jobs WHERE rollout_id = %s AND "
                           "device_id = %s AND status IN ('done', 'error')",
                           (rid, device_id)), device_id  # fmt: skip
    assert final["status"] == "cancelled"
    assert final["counts"]["cancelled"] == report["not_started"] + report["cancelled_jobs"]


@pytest.mark.chaos
def test_max_per_minute_spreads_the_commands_as_asked(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    """At 120/min the token bucket lets a burst of BURST_S seconds of the rate go at once, then
    2 commands/s: timed where they arrive (first arrival per device, at the test's MQTT
    subscriber), never more than the bucket allows in any window, and close to the rate."""
    rate = 120
    devices, version = fleet(ota_api, scaled(60, 300))
    with running(devices, stack_env, sim.Behaviour(firmware_ms=100, seed=6)) as commands:
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": [100],
            "max_per_minute": rate})  # fmt: skip
        assert answer.status_code == 201, answer.text
        expected = (len(devices) - pacing.capacity(rate)) / (rate / 60)
        wait_for(lambda: all(commands.of(d) for d in devices), timeout=expected * 2 + 60,
                 interval=0.5, what="every device's command")  # fmt: skip
    arrived = commands.first_arrivals()
    assert len(arrived) == len(devices)
    burst = int(pacing.capacity(rate))
    for window in (1, 5, 10, 30, 60):  # the bucket's bound, with a command of slack for jitter
        most = max(bisect.bisect_left(arrived, t + window) - n for n, t in enumerate(arrived))
        assert most <= burst + rate / 60 * window + 1, (window, most)
    after_burst = arrived[burst:]
    achieved = (len(after_burst) - 1) / (after_burst[-1] - after_burst[0])
    assert 0.7 * rate / 60 <= achieved <= 1.25 * rate / 60, achieved
