"""The OTA step of `objectflow demo` (docs/ota.md): against the running runtime, upload a
firmware, register devices in two time zones, create an immediate, a timed and a cron job and
a mass update, then print each job's events as they arrive on Kafka `job.events`; then a mass
update of 50 simulated devices (devstack/ota/sim.py) end to end, created -> ready ->
dispatched -> downloading -> flashing -> done, with the per-status counts and the slowest
device; then a rollout in 3 waves over ROLLOUT_FLEET simulated devices whose second wave fails
30% of the time: it pauses itself, the demo prints its state and saves its PDF report (GET
`<ota-reports>/reports/rollouts/<id>.pdf`) under .devstack/demo/."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from devstack import wiring
from devstack.config import PATHS
from devstack.demo import wait
from devstack.dlq import with_stack_settings
from devstack.ota import sim

ORDER = 40
FLEET = 50
FINAL = ("done", "error", "timed_out", "cancelled")


ROLLOUT_FLEET = 200
ROLLOUT_WAVES = [5, 30, 100]  # 10, 50 and 140 devices
ROLLOUT_ABORT = {"failure_percent": 20, "min_finished": 10}
REPORTS = "ota-reports"  # the function serving GET /reports/rollouts/<id>.pdf


def run(env: dict[str, str], console: Console) -> bool:
    ports = wiring.default().ports()
    api = f"http://127.0.0.1:{ports['ota-api']}"
    scheduled = jobs_and_events(api, env, console)
    updated = fleet(api, env, console)
    paused = rollout(api, console)
    report = paused is not None and rollout_pdf(ports, paused, console)
    return scheduled and updated and paused is not None and report


def jobs_and_events(api: str, env: dict[str, str], console: Console) -> bool:
    run_id = uuid.uuid4().hex[:6]
    consumer = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    partitions = [TopicPartition("job.events", p)
                  for p in sorted(consumer.partitions_for_topic("job.events") or [])]  # fmt: skip
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)

    version = f"demo-{run_id}"
    firmware = requests.put(f"{api}/firmwares/{version}", data=os.urandom(4096), timeout=10)
    console.print(f"firmware {version}: {firmware.status_code} sha256 {firmware.json()['sha256']}")
    devices = {f"demo-berlin-{run_id}": "Europe/Berlin", f"demo-bangkok-{run_id}": "Asia/Bangkok"}
    for device_id, zone in devices.items():
        requests.put(f"{api}/devices/{device_id}", json={"model": "demo", "timezone": zone},
                     timeout=10).raise_for_status()  # fmt: skip
    berlin, bangkok = devices
    soon = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    asks = {
        "immediate": {"device_id": berlin},
        "timed (+20 s)": {"device_id": bangkok, "schedule_time": soon},
        "cron 30 2 * * * (device zone)": {"device_id": berlin, "cron": "30 2 * * *"},
        "mass update": {"device_ids": list(devices)},
    }
    jobs: dict[str, str] = {}
    for label, body in asks.items():
        answer = requests.post(f"{api}/jobs", json={**body, "firmware_version": version},
                               timeout=10).json()  # fmt: skip
        for job in answer.get("jobs", [answer]):
            jobs[job["id"]] = f"{label} ({job['device_id']}, due {job['due_at']})"
    seen: dict[str, list[str]] = {job_id: [] for job_id in jobs}
    # the timed job is made ready by ota-scheduler-tick (every minute): up to 20 s + 60 s, plus
    # headroom for a busy machine
    deadline = time.monotonic() + 150
    ready = {j for j, label in jobs.items() if not label.startswith("cron")}
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for record in batch:
                event = json.loads(record.value)
                if event.get("job_id") in seen and event["type"] not in seen[event["job_id"]]:
                    seen[event["job_id"]].append(event["type"])
                    ce_type = dict(record.headers)["ce_type"].decode()
                    console.print(f"  {event['type']:<22} {ce_type:<42} {jobs[event['job_id']]}")
        if all("job.ready_to_execute" in seen[j] for j in ready):
            break
    consumer.close()
    table = Table(title="ota: events per job on job.events")
    table.add_column("job")
    table.add_column("events")
    for job_id, label in jobs.items():
        table.add_row(label, ", ".join(seen[job_id]))
    console.print(table)
    cron_created = all(seen[j] == ["job.created"] for j in jobs if j not in ready)
    # ota-dispatcher then sends each ready job's command: a job.updated (dispatched) may follow
    made_ready = ["job.created", "job.ready_to_execute"]
    return cron_created and all(seen[j][:2] == made_ready for j in ready)


def fleet(api: str, env: dict[str, str], console: Console) -> bool:
    """A mass update of FLEET simulated devices through the whole pipeline; True when every job
    ended done."""
    run_id = uuid.uuid4().hex[:6]
    ids = [f"demo-sim-{run_id}-{n:03d}" for n in range(FLEET)]
    failed = asyncio.run(sim.register(api, ids))
    version = f"demo-fleet-{run_id}"
    upload = requests.put(f"{api}/firmwares/{version}", data=os.urandom(64 * 1024), timeout=10)
    console.print(f"fleet: {FLEET - len(failed)} simulated devices registered, "
                  f"firmware {version}: {upload.status_code}")  # fmt: skip
    if failed or upload.status_code != 201:
        return False
    with with_stack_settings():
        broker = sim.stack_broker()
    stats, stop = sim.Stats(), threading.Event()
    behaviour = sim.Behaviour(firmware_ms=300, seed=16)
    devices = threading.Thread(
        target=lambda: asyncio.run(sim.simulate(ids, broker, behaviour, stats, until=stop.is_set))
    )
    devices.start()
    jobs: dict[str, dict[str, Any]] = {}
    passed: defaultdict[str, set[str]] = defaultdict(set)  # status -> jobs seen in it
    try:
        if not wait(lambda: stats.connected == FLEET, timeout=60):
            console.print(f"fleet: only {stats.connected}/{FLEET} devices connected")
            return False
        answer = requests.post(f"{api}/jobs", json={"device_ids": ids, "firmware_version": version},
                               timeout=60)  # fmt: skip
        jobs = {job["id"]: job for job in answer.json()["jobs"]}
        console.print(f"fleet: POST /jobs -> {answer.status_code}, {len(jobs)} jobs")
        seen: Counter[str] = Counter()
        for job_id in jobs:
            passed[jobs[job_id]["status"]].add(job_id)

        def all_final() -> bool:
            for job_id, job in jobs.items():
                if job["status"] not in FINAL:
                    jobs[job_id] = http.get(f"{api}/jobs/{job_id}", timeout=10).json()
                    passed[jobs[job_id]["status"]].add(job_id)
            now = Counter(job["status"] for job in jobs.values())
            if now != seen:
                seen.clear()
                seen.update(now)
                console.print("  " + ", ".join(f"{k} {v}" for k, v in sorted(now.items())))
            return all(job["status"] in FINAL for job in jobs.values())

        with requests.Session() as http:
            wait(all_final, timeout=120)
    finally:
        stop.set()
        devices.join(timeout=30)
    table = Table(title=f"ota: mass update of {FLEET} simulated devices")
    table.add_column("status")
    table.add_column("jobs seen in it (GET /jobs/<id>)", justify="right")
    table.add_column("jobs in it at the end", justify="right")
    table.add_column("statuses the devices sent", justify="right")
    by_status = Counter(job["status"] for job in jobs.values())
    for status in ("scheduled", "ready", "dispatched", "downloading", "flashing", *FINAL):
        sent = stats.statuses.get(status, "")
        table.add_row(status, str(len(passed[status])), str(by_status[status]), str(sent))
    console.print(table)
    finals = [j for j in jobs.values() if j["status"] in FINAL]
    if finals:
        slowest = max(finals, key=took)
        console.print(f"slowest device: {slowest['device_id']} ({slowest['status']} "
                      f"{took(slowest):.2f} s after its job was created)")  # fmt: skip
    return len(jobs) == FLEET and by_status["done"] == FLEET


def took(job: dict[str, Any]) -> float:
    """Seconds from the job's creation to its last change."""
    return (datetime.fromisoformat(job["updated_at"])
            - datetime.fromisoformat(job["created_at"])).total_seconds()  # fmt: skip


def rollout(api: str, console: Console) -> str | None:
    """A rollout in ROLLOUT_WAVES over ROLLOUT_FLEET simulated devices, 30% of wave 2 failing:
    the id of the rollout once it paused itself in wave 2 (None if it did not)."""
    run_id = uuid.uuid4().hex[:6]
    ids = [f"demo-roll-{run_id}-{n:03d}" for n in range(ROLLOUT_FLEET)]
    first, second = (math.ceil(p * ROLLOUT_FLEET / 100) for p in ROLLOUT_WAVES[:2])
    failing = frozenset(d for n, d in enumerate(ids[first:second]) if n % 10 in (1, 4, 7))
    version = f"demo-rollout-{run_id}"
    failed = asyncio.run(sim.register(api, ids))
    upload = requests.put(f"{api}/firmwares/{version}", data=os.urandom(16 * 1024), timeout=10)
    console.print(f"rollout: {ROLLOUT_FLEET - len(failed)} simulated devices registered, "
                  f"{len(failing)} of wave 2's {second - first} failing; firmware {version}: "
                  f"{upload.status_code}")  # fmt: skip
    if failed or upload.status_code != 201:
        return None
    with with_stack_settings():
        broker = sim.stack_broker()
    stats, stop = sim.Stats(), threading.Event()
    behaviour = sim.Behaviour(firmware_ms=300, fail_devices=failing, seed=17)
    devices = threading.Thread(
        target=lambda: asyncio.run(sim.simulate(ids, broker, behaviour, stats, until=stop.is_set))
    )
    devices.start()
    try:
        if not wait(lambda: stats.connected == ROLLOUT_FLEET, timeout=60):
            console.print(f"rollout: only {stats.connected}/{ROLLOUT_FLEET} devices connected")
            return None
        answer = requests.post(f"{api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": ids, "waves": ROLLOUT_WAVES,
            "abort": ROLLOUT_ABORT})  # fmt: skip
        rule = f"{ROLLOUT_ABORT['failure_percent']}% of {ROLLOUT_ABORT['min_finished']}+ finished"
        console.print(f"rollout: POST /rollouts (waves {ROLLOUT_WAVES}, pause when over {rule} "
                      f"failed) -> {answer.status_code}")  # fmt: skip
        if answer.status_code != 201:
            console.print(answer.text)
            return None
        rollout_id = answer.json()["id"]

        def state() -> dict[str, Any]:
            return dict(requests.get(f"{api}/rollouts/{rollout_id}", timeout=10).json())

        seen: list[str] = []

        def settled() -> dict[str, Any] | None:
            now = state()
            line = f"  {now['status']}, wave {now['current_wave']}: " + ", ".join(
                f"{k} {v}" for k, v in now["counts"].items() if v
            )
            if not seen or seen[-1] != line:
                seen.append(line)
                console.print(line)
            return now if now["status"] != "running" else None

        paused = wait(settled, timeout=90)
        if paused is not None:  # what was already with its devices ends; nothing new leaves
            wait(lambda: not any(state()["counts"][s] for s in IN_FLIGHT), timeout=30)
            paused = state()
    finally:
        stop.set()
        devices.join(timeout=30)
    if paused is None:
        console.print("rollout: still running after 90 s")
        return None
    print_rollout(paused, console)
    ok = paused["status"] == "paused" and paused["current_wave"] == 2
    console.print(f"rollout {rollout_id}: {paused['status']} in wave {paused['current_wave']}"
                  + ("" if ok else " (expected: paused in wave 2)")
                  + f"; resume or cancel it with POST {api}/rollouts/{rollout_id}/resume or "
                  f"/cancel and If-Match: {paused['version']}")  # fmt: skip
    return rollout_id if ok else None


IN_FLIGHT = ("scheduled", "ready", "dispatched", "downloading", "flashing")


def print_rollout(rollout: dict[str, Any], console: Console) -> None:
    table = Table(title=f"ota: rollout {rollout['id']} — {rollout['status']}: {rollout['reason']}")
    for column in ("wave", "percent", "devices", "status", "counts"):
        table.add_column(column)
    for n, wave in enumerate(rollout["waves"], 1):
        counts = ", ".join(f"{k} {v}" for k, v in wave["counts"].items() if v)
        table.add_row(str(n), f"{wave['percent']:g}", str(len(wave["devices"])), wave["status"],
                      counts)  # fmt: skip
    console.print(table)


def reports_url(ports: dict[str, int]) -> str:
    """ota-reports' URL, found as ota-api's is (the wiring's ports); a clear error while the
    function is not declared in charts/objectflow/values.yaml."""
    if REPORTS not in ports:
        raise LookupError(
            f"function {REPORTS} is not declared in charts/objectflow/values.yaml, so the "
            "rollout's PDF (GET /reports/rollouts/<id>.pdf) cannot be fetched"
        )
    return f"http://127.0.0.1:{ports[REPORTS]}"


def rollout_pdf(ports: dict[str, int], rollout_id: str, console: Console) -> bool:
    """GET the rollout's PDF report from ota-reports into .devstack/demo/rollout-<id>.pdf."""
    try:
        url = f"{reports_url(ports)}/reports/rollouts/{rollout_id}.pdf"
    except LookupError as exc:
        console.print(f"[red]rollout PDF: {exc}[/red]")
        return False
    answer = requests.get(url, timeout=60)
    if answer.status_code != 200 or not answer.content.startswith(b"%PDF"):
        kind = answer.headers.get("content-type")
        console.print(f"[red]rollout PDF: GET {url} -> {answer.status_code} {kind}: "
                      f"{answer.text[:200]}[/red]")  # fmt: skip
        return False
    path = PATHS.state / "demo" / f"rollout-{rollout_id}.pdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(answer.content)
    console.print(f"rollout PDF: {len(answer.content):,} bytes from GET {url} -> {path}")
    return True
