"""The OTA step of `objectflow demo` (docs/ota.md): against the running runtime, upload a
firmware, register devices in two time zones, create an immediate, a timed and a cron job and
a mass update, then print each job's events as they arrive on Kafka `job.events`."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import requests
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from devstack import wiring

ORDER = 40


def run(env: dict[str, str], console: Console) -> bool:
    api = f"http://127.0.0.1:{wiring.default().ports()['ota-api']}"
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
    return cron_created and all(seen[j] == ["job.created", "job.ready_to_execute"] for j in ready)
