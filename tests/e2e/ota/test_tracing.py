"""One OTA job is one trace (issue 18): `POST /jobs` with a caller's traceparent -> outbox ->
relay -> Kafka -> ota-scheduler -> outbox -> relay -> Kafka -> ota-dispatcher -> the MQTT
command, whose MQTT 5 `traceparent` user property continues the caller's trace
(tests/tracing_support.py reads the collector)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import requests

from tests.ota_support import Commands
from tests.support import wait_for
from tests.tracing_support import trace_id, wait_for_trace


def test_an_ota_job_continues_the_callers_trace_to_the_mqtt_command(
    mqtt_env: None, ota_api: str, firmware: str, devices: Callable[..., list[str]]
) -> None:
    (device,) = devices(1)
    commands = Commands([device])
    trace = secrets.token_hex(16)
    try:
        answer = requests.post(
            f"{ota_api}/jobs",
            json={"device_id": device, "firmware_version": firmware},
            headers={"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        (command,) = wait_for(lambda: commands.of(device), timeout=120, what="the command")
        assert trace_id(commands.traceparents[command["message_id"]]) == trace
    finally:
        commands.close()
    expected = [
        ("ota-api", "POST /jobs", "server"),
        ("ota-api", "postgres", "client"),
        ("ota-outbox-relay", "job.events publish", "producer"),
        ("ota-scheduler", "ota-scheduler ", "server"),
        ("ota-dispatcher", "ota-dispatcher ", "server"),
        ("ota-dispatcher", "mqtt", "client"),
    ]
    wait_for_trace(trace, expected, "the job's spans in the collector")
