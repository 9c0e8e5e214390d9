"""A fleet end to end (issue 16, Must show): simulated devices (devstack/ota/sim.py) take a mass
update through the real pipeline — ota-api -> outbox -> job.events -> ota-scheduler ->
ota-dispatcher -> MQTT commands/<id>/ota -> presigned download -> status/<id>/update -> MQTT
bridge -> Kafka device.status -> ota-status — over a flaky link (5% failing devices, 10%
duplicated and 5% reordered statuses, a few disconnects), plus a few devices that never answer
and time out through ota-deadlines. Then every device.status record of the fleet is produced
again: no job changes.

`make test` runs 50 devices, `make chaos` 200."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from typing import Any

import pytest
import requests

from devstack.ota import sim
from devstack.runtime import ticker
from functions.ota.statuses import RANK
from tests.e2e.conftest import OVERLAY
from tests.ota_support import JobEvents, sql
from tests.support import scaled, wait_for

FINAL = {"done", "error", "timed_out", "cancelled"}


def job_rows(env: dict[str, str], job_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    rows = sql(env, "SELECT id::text, status, version, updated_at, retries FROM ota.jobs "
               "WHERE id = ANY(%s::uuid[])", (job_ids,))  # fmt: skip
    return {row[0]: row[1:] for row in rows}


def applied(env: dict[str, str], job_ids: list[str]) -> dict[str, list[str]]:
    """job id -> the statuses ota-status applied to it, in the order it applied them."""
    rows = sql(env, "SELECT job_id::text, detail->>'status' FROM ota.job_events "
               "WHERE job_id = ANY(%s::uuid[]) AND type = 'status.applied' ORDER BY id",
               (job_ids,))  # fmt: skip
    found: dict[str, list[str]] = {j: [] for j in job_ids}
    for job_id, status in rows:
        found[job_id].append(status)
    return found


def firmwares(env: dict[str, str], device_ids: list[str]) -> dict[str, str | None]:
    rows = sql(env, "SELECT device_id, current_firmware FROM ota.devices "
               "WHERE device_id = ANY(%s)", (device_ids,))  # fmt: skip
    return dict(rows)


def completed(events: JobEvents, device_ids: list[str]) -> Counter[str]:
    """job id -> job.completed records on job.events."""
    return Counter(r.value["job_id"] for r in events.of(device_ids)
                   if r.value.get("type") == "job.completed")  # fmt: skip


@pytest.mark.chaos
def test_a_mass_update_of_a_flaky_fleet_ends_as_each_device_behaved(
    ota_api: str, stack_env: dict[str, str]
) -> None:
    from kafka import KafkaProducer

    run = uuid.uuid4().hex[:8]
    count, silent_count = scaled(50, 200), scaled(2, 5)
    live = [f"fleet-{run}-{n:05d}" for n in range(count)]
    silent = [f"fleet-{run}-silent-{n}" for n in range(silent_count)]  # never connect
    fleet = live + silent
    assert asyncio.run(sim.register(ota_api, fleet)) == []
    version = f"fw-fleet-{run}"
    upload = requests.put(f"{ota_api}/firmwares/{version}", data=b"\x7fFW" * 20_000, timeout=10)
    assert upload.status_code == 201, upload.text

    broker = sim.Broker("127.0.0.1", 1883, stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    behaviour = sim.Behaviour(firmware_ms=200, fail_rate=0.05, dup_rate=0.1, reorder_rate=0.05,
                              disconnect_rate=0.02, seed=5)  # fmt: skip
    stats, stop = sim.Stats(), threading.Event()
    runner = threading.Thread(target=lambda: asyncio.run(
        sim.simulate(live, broker, behaviour, stats, until=stop.is_set)))  # fmt: skip
    events = JobEvents(stack_env)
    statuses = JobEvents(stack_env, topic="device.status")
    dlq = JobEvents(stack_env, topic="device.status.dlq")
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"].split(","),
                             acks="all")  # fmt: skip
    runner.start()
    try:
        wait_for(lambda: stats.connected == count, timeout=60, what=f"{count} devices connected")
        answer = requests.post(f"{ota_api}/jobs", timeout=60,
                               json={"device_ids": fleet, "firmware_version": version})  # fmt: skip
        assert answer.status_code == 201, answer.text
        jobs = {job["device_id"]: job["id"] for job in answer.json()["jobs"]}
        job_ids = list(jobs.values())
        expected = {jobs[d]: "error" if d in stats.failing else "done" for d in live}
        expected |= {jobs[d]: "timed_out" for d in silent}
        assert 0 < len(stats.failing) < count  # the fleet does have failing devices

        live_jobs = [jobs[d] for d in live]
        wait_for(
            lambda: all(row[0] in FINAL for row in job_rows(stack_env, live_jobs).values()),
            timeout=60,
            interval=0.5,
            what="every live device's job final",
        )
        # The silent devices: each deadline passed (aged here rather than waited for), so
        # ota-deadlines re-dispatches them OTA_MAX_RETRIES (2) times, then times them out.
        for retry in range(3):
            wait_for(
                lambda r=retry: all(row[0] == "dispatched" and row[3] == r
                                    for row in job_rows(stack_env, [jobs[d] for d in silent])
                                    .values()),
                timeout=30, interval=0.3, what=f"the silent jobs dispatched (retry {retry})",
            )  # fmt: skip
            sql(stack_env, "UPDATE ota.jobs SET deadline_at = now() - interval '1 second' "
                "WHERE id = ANY(%s::uuid[])", ([jobs[d] for d in silent],))  # fmt: skip
            assert all(r.status < 300 for r in ticker.run_by_hand("ota-deadlines", [OVERLAY]))
        wait_for(
            lambda: {j: row[0] for j, row in job_rows(stack_env, job_ids).items()} == expected,
            timeout=30, interval=0.5, what="every job as its device behaved",
        )  # fmt: skip
    finally:
        stop.set()
        runner.join(timeout=30)
    try:
        assert stats.link["duplicated"] > 0 and stats.link["reordered"] > 0
        assert stats.link["disconnects"] > 0

        # each device's statuses applied in order: forward only, never twice, ending as it did
        order = applied(stack_env, job_ids)
        for device_id in live:
            steps = order[jobs[device_id]]
            ranks = [RANK[s] for s in steps]
            assert ranks == sorted(set(ranks)) and steps[-1] == expected[jobs[device_id]], (
                device_id, steps,
            )  # fmt: skip
        assert all(order[jobs[d]] == [] for d in silent)

        # exactly one job.completed per job on Kafka job.events, with the job's outcome
        wait_for(lambda: set(completed(events, fleet)) == set(job_ids), timeout=30,
                 what="a job.completed of every job on job.events")  # fmt: skip
        ends = completed(events, fleet)
        assert ends == Counter(job_ids), {j: n for j, n in ends.items() if n != 1}
        outcomes = {r.value["job_id"]: r.value["outcome"] for r in events.of(fleet)
                    if r.value.get("type") == "job.completed"}  # fmt: skip
        assert outcomes == expected

        # every device that reported done runs the new firmware; no other does
        current = firmwares(stack_env, fleet)
        for device_id in fleet:
            ended = stats.finished.get(device_id)
            want = version if ended == "done" else None
            assert current[device_id] == want, (device_id, ended, current[device_id])
        for device_id in [d for d in live if stats.finished.get(d) == "done"][:3]:
            device = requests.get(f"{ota_api}/devices/{device_id}", timeout=10).json()
            assert device["current_firmware"] == version

        # replay: every device.status record of the fleet produced again, changes nothing
        published = sum(stats.statuses.values())
        wait_for(
            lambda: len(statuses.of(live)) >= published,
            timeout=30,
            what=f"{published} records on device.status",
        )
        records = statuses.of(live)
        before = (job_rows(stack_env, job_ids), order, current)
        for record in records:
            producer.send("device.status", key=record.key.encode(),
                          value=json.dumps(record.value).encode())  # fmt: skip
        marker = f"replayed-{run}"
        for device_id in live:  # after the replay in each device's partition: a DLQ'd marker
            producer.send("device.status", key=device_id.encode(), value=marker.encode())
        producer.flush(timeout=30)
        wait_for(
            lambda: {r.key for r in dlq.of(live) if r.value.get("payload") == marker} == set(live),
            timeout=60, interval=0.5, what="the replay handled (every device's marker in the DLQ)",
        )  # fmt: skip
        after = (
            job_rows(stack_env, job_ids),
            applied(stack_env, job_ids),
            firmwares(stack_env, fleet),
        )
        assert after == before
        assert completed(events, fleet) == Counter(job_ids)  # no job.completed again
    finally:
        producer.close()
        for reader in (events, statuses, dlq):
            reader.close()
