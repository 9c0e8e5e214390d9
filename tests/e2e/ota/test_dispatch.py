"""Commands end to end through the running runtime: a job created over ota-api -> ready ->
Kafka job.events -> ota-dispatch-commands -> ota-dispatcher -> MQTT commands/<id>/ota ->
dispatched; and the dispatcher's breaker across a real Mosquitto outage."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from devstack import wiring
from tests.ota_support import Commands, JobEvents, ready_event, unique
from tests.support import scaled, start_stack, stop_service, wait_for


def create(ota_api: str, device_id: str, firmware: str) -> dict[str, Any]:
    response = requests.post(
        f"{ota_api}/jobs", timeout=10, json={"device_id": device_id, "firmware_version": firmware}
    )
    assert response.status_code == 201, response.text
    return response.json()


def job(ota_api: str, job_id: str) -> dict[str, Any]:
    return requests.get(f"{ota_api}/jobs/{job_id}", timeout=10).json()


def test_a_job_created_over_the_api_is_dispatched_and_its_command_arrives(
    mqtt_env: None, ota_api: str, firmware: str, devices: Callable[..., list[str]],
    stack_env: dict[str, str],
) -> None:  # fmt: skip
    (device,) = devices(1)
    commands = Commands([device])
    events = JobEvents(stack_env)
    try:
        made = create(ota_api, device, firmware)
        (cmd,) = wait_for(lambda: commands.of(device), timeout=120, what="the command on MQTT")
        found = wait_for(
            lambda: (j := job(ota_api, made["id"]))["status"] == "dispatched" and j,
            timeout=30,
            what="the job dispatched",
        )
        assert cmd["job_id"] == made["id"] and cmd["message_id"] == found["message_id"]
        body = requests.get(cmd["url"], timeout=10).content
        assert hashlib.sha256(body).hexdigest() == cmd["sha256"] and len(body) == cmd["size"]
        wait_for(
            lambda: (
                [r.value["type"] for r in events.of([device])]
                == ["job.created", "job.ready_to_execute", "job.updated"]
            ),
            timeout=30,
            what="created, ready_to_execute, updated (dispatched) on job.events",
        )
        assert events.of([device])[-1].value["status"] == "dispatched"
    finally:
        commands.close()
        events.close()


def post_ready(url: str, data: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    attributes = {
        "type": "objectflow.ota.job.ready_to_execute.v1",
        "source": "/objectflow/ota",
        "id": unique("probe"),
    }
    headers, body = to_binary(CloudEvent(attributes, data))
    started = time.monotonic()
    response = requests.post(url, headers=headers, data=body, timeout=30)
    return (
        response.status_code,
        response.json() if response.content else {},
        (time.monotonic() - started),
    )


def test_the_breaker_opens_while_mosquitto_is_down_and_every_command_arrives_after(
    mqtt_env: None, ota_api: str, firmware: str, devices: Callable[..., list[str]],
    values: wiring.Values,
) -> None:  # fmt: skip
    fleet = devices(3)
    dispatcher = f"http://127.0.0.1:{values.ports()['ota-dispatcher']}/"
    commands = Commands(fleet, persistent=True)  # Mosquitto keeps its session across restart
    stop_service("mosquitto")
    try:
        made = [create(ota_api, device, firmware) for device in fleet]
        ready = wait_for(
            lambda: (j := job(ota_api, made[0]["id"]))["status"] == "ready" and j,
            timeout=30,
            what="a job made ready",
        )

        def breaker_open() -> bool:
            status, body, _ = post_ready(dispatcher, ready_event(ready))
            return status == 503 and "breaker open" in body.get("detail", "")

        wait_for(breaker_open, timeout=60, interval=0.5, what="the dispatcher's breaker open")
        status, body, elapsed = post_ready(dispatcher, ready_event(ready))
        assert status == 503 and body["dependency"] == "mqtt"
        assert elapsed < 0.3, f"an open breaker answered after {elapsed:.2f}s"
        assert all(job(ota_api, m["id"])["status"] == "ready" for m in made)
    finally:
        start_stack()
    try:

        def all_dispatched() -> list[dict[str, Any]] | None:
            found = [job(ota_api, m["id"]) for m in made]
            return found if all(j["status"] == "dispatched" for j in found) else None

        dispatched = wait_for(
            all_dispatched, timeout=180, interval=1, what="every job dispatched after Mosquitto"
        )
        for device, found in zip(fleet, dispatched, strict=True):
            wait_for(lambda d=device: commands.of(d), timeout=60, what=f"the command of {device}")
            assert {c["message_id"] for c in commands.of(device)} == {found["message_id"]}
    finally:
        commands.close()


@pytest.mark.chaos
def test_a_mass_update_goes_out_at_the_dispatch_rate(
    mqtt_env: None, ota_api: str, firmware: str, devices: Callable[..., list[str]]
) -> None:
    fleet = devices(scaled(250, 1000))
    commands = Commands(fleet)
    try:
        response = requests.post(
            f"{ota_api}/jobs", timeout=60, json={"device_ids": fleet, "firmware_version": firmware}
        )
        assert response.status_code == 201, response.text
        wait_for(
            lambda: len({c["device_id"] for d in fleet for c in commands.of(d)}) == len(fleet),
            timeout=180,
            interval=1,
            what=f"{len(fleet)} commands",
        )
        times = sorted(commands.times())
        # OTA_DISPATCH_RATE=50 (the default), a second's worth at once: 250 commands take at
        # least 4 s after the first, and no second holds more than the rate (a little slack
        # for delivery jitter).
        assert times[-1] - times[0] >= (len(fleet) - 50) / 50
        busiest = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
        assert busiest <= 55, f"{busiest} commands within one second"
    finally:
        commands.close()
