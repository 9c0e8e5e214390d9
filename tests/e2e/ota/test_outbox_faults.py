"""The outbox under faults, through the running runtime (each fault counted):
Kafka stopped while 1,000 jobs are created, and the relay SIGKILLed mid-batch."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import requests

from tests.ota_support import JobEvents
from tests.support import start_stack, stop_service, wait_for

ROOT = Path(__file__).resolve().parents[3]


def create(ota_api: str, devices: list[str], firmware: str, rounds: int) -> list[dict[str, object]]:
    """`rounds` jobs per device, due in a year: these tests count their job.created events,
    and thousands of jobs due now would hold the dispatcher (50 commands/s) for a minute
    after them, in front of the next test's."""
    later = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    made = []
    for _ in range(rounds):
        response = requests.post(
            f"{ota_api}/jobs",
            timeout=30,
            json={"device_ids": devices, "firmware_version": firmware, "schedule_time": later},
        )
        assert response.status_code == 201, response.text
        made += response.json()["jobs"]
    return made


def created_ids(events: JobEvents, devices: list[str]) -> dict[str, list[str]]:
    """device -> job ids of its job.created events, in the order Kafka holds them."""
    per_device: dict[str, list[str]] = {d: [] for d in devices}
    for r in events.of(devices):
        if r.value["type"] == "job.created" and r.value["job_id"] not in per_device[r.key]:
            per_device[r.key].append(str(r.value["job_id"]))
    return per_device


def test_jobs_created_while_kafka_is_down_all_arrive_in_order(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> None:
    fleet = devices(50)
    stop_service("kafka")
    try:
        made = create(ota_api, fleet, firmware, rounds=20)  # 1,000 jobs, 20 per device
    finally:
        start_stack()
    assert len(made) == 1000
    events = JobEvents(stack_env)
    events.consumer.seek_to_beginning()  # what was published since Kafka came back
    try:
        wait_for(
            lambda: sum(map(len, created_ids(events, fleet).values())) >= 1000,
            timeout=180,
            interval=1,
            what="1,000 job.created",
        )
        found = created_ids(events, fleet)
    finally:
        events.close()
    for device in fleet:
        assert found[device] == [j["id"] for j in made if j["device_id"] == device]


def relay_pid() -> int:
    """The runtime's relay, started from this checkout (the runtime e2e.sh started)."""
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[-2:] == ["-m", "functions.ota.relay"] and process.info["cwd"] == str(ROOT):
            return int(process.info["pid"])
    raise AssertionError("the runtime runs no ota-outbox-relay from this checkout")


def test_a_relay_killed_mid_batch_loses_nothing(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> None:
    fleet = devices(200)
    events = JobEvents(stack_env)
    try:
        victim = relay_pid()
        made = create(ota_api, fleet, firmware, rounds=10)  # 2,000 job.created rows
        wait_for(
            lambda: len(events.of(fleet)) > 0,
            timeout=30,
            interval=0.01,
            what="the relay started publishing",
        )
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: relay_pid() != victim, timeout=60, what="the runtime restarts the relay")
        wanted = {j["id"] for j in made}
        wait_for(
            lambda: (
                wanted
                <= {r.value["job_id"] for r in events.of(fleet) if r.value["type"] == "job.created"}
            ),
            timeout=120,
            interval=1,
            what="every job.created",
        )
        created = [r for r in events.of(fleet) if r.value["type"] == "job.created"]
    finally:
        events.close()
    distinct = {r.value["event_id"] for r in created}
    assert len(distinct) == len(made) == 2000  # every event at least once, counted exactly
    assert len(created) >= len(distinct)  # duplicates are allowed, loss is not
