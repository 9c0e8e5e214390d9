"""Jobs end to end through the running runtime: HTTP -> PostgreSQL outbox -> relay -> Kafka
job.events (with CloudEvents headers) -> Kafka source -> broker -> ota-scheduler -> ready."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import requests

from tests.ota_support import JobEvents
from tests.support import wait_for


def kinds(events: JobEvents, device: str, job_id: str) -> list[str]:
    seen = [r for r in events.of([device]) if r.value.get("job_id") == job_id]
    return [r.value["type"] for r in {r.value["event_id"]: r for r in seen}.values()]


def test_create_patch_cancel_and_ready_over_http(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> None:
    device, other = devices(2)
    events = JobEvents(stack_env)
    try:
        later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
        timed = requests.post(
            f"{ota_api}/jobs",
            timeout=10,
            json={"device_id": device, "firmware_version": firmware, "schedule_time": later},
        ).json()
        url = f"{ota_api}/jobs/{timed['id']}"
        patched = requests.patch(
            url, json={"cron": "15 4 * * *"}, headers={"If-Match": '"1"'}, timeout=10
        )
        assert patched.status_code == 200 and patched.headers["ETag"] == '"2"'
        cancelled = requests.post(
            f"{url}/cancel", headers={"If-Match": patched.headers["ETag"]}, timeout=10
        )
        assert cancelled.status_code == 200
        now = requests.post(
            f"{ota_api}/jobs", timeout=10, json={"device_id": other, "firmware_version": firmware}
        ).json()

        wait_for(
            lambda: (
                kinds(events, device, timed["id"])
                == ["job.created", "job.updated", "job.cancelled"]
            ),
            timeout=30,
            what="created, updated, cancelled in order",
        )
        wait_for(
            lambda: (
                kinds(events, other, now["id"])
                == ["job.created", "job.ready_to_execute", "job.updated"]
            ),
            timeout=30,
            what="an immediate job made ready, then dispatched",
        )
    finally:
        events.close()
    for record in [r for r in events.records if r.key in (device, other)]:
        assert record.headers["ce_specversion"] == "1.0"
        assert record.headers["ce_id"] == record.value["event_id"]
        assert record.headers["ce_type"] == f"objectflow.ota.{record.value['type']}.v1"
        assert record.headers["ce_subject"] == record.value["job_id"]
        assert record.headers["ce_source"]
    job = requests.get(f"{ota_api}/jobs/{now['id']}", timeout=10).json()
    assert job["status"] == "dispatched" and job["version"] == 3  # ota-dispatcher sent it


def test_a_timed_job_becomes_ready_within_a_minute_of_its_time(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> None:
    (device,) = devices(1)
    due = datetime.now(UTC) + timedelta(seconds=5)
    events = JobEvents(stack_env)
    try:
        job = requests.post(
            f"{ota_api}/jobs",
            timeout=10,
            json={
                "device_id": device,
                "firmware_version": firmware,
                "schedule_time": due.isoformat(),
            },
        ).json()
        (ready,) = wait_for(
            lambda: [
                r.value
                for r in events.of([device])
                if r.value.get("job_id") == job["id"] and r.value["type"] == "job.ready_to_execute"
            ],
            timeout=90,
            interval=0.5,
            what="job.ready_to_execute",
        )
    finally:
        events.close()
    assert ready["status"] == "ready"  # as of that event; ota-dispatcher moves it on
    became = datetime.fromisoformat(ready["occurred_at"])
    assert due <= became <= due + timedelta(seconds=65)
