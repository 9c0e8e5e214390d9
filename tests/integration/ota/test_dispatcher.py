"""ota-dispatcher in-process against the real Mosquitto, PostgreSQL, Redis and MinIO: the
command and its link, duplicates, bad events, the shared rate limit and the circuit breaker."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from devstack.process import free_port
from functions.ota import signing
from functions.runtime import settings
from tests.ota_support import Commands, outbox_rows, post_event, sql
from tests.support import wait_for

MakeJob = Callable[..., dict[str, Any]]


@pytest.fixture
def commands() -> Iterator[Callable[..., Commands]]:
    opened: list[Commands] = []

    def open_for(*devices: str) -> Commands:
        opened.append(Commands(devices))
        return opened[-1]

    yield open_for
    for subscriber in opened:
        subscriber.close()


def job_row(env: dict[str, str], job_id: str) -> tuple[Any, ...]:
    (row,) = sql(
        env,
        "SELECT status, version, message_id::text, deadline_at FROM ota.jobs WHERE id = %s",
        (job_id,),
    )
    return row


def test_a_ready_job_gets_its_command_and_the_link_serves_the_firmware(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands], api: Any,
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    event = ready_job()
    device_id, job_id = event["device_id"], event["job_id"]
    subscriber = commands(device_id)
    response = post_event(dispatcher, event)
    assert response.status_code == 204, response.text

    (cmd,) = wait_for(lambda: subscriber.of(device_id), what="the command")
    firmware = api.get(f"/firmwares/{event['firmware_version']}").json()
    assert set(cmd) == {"message_id", "job_id", "device_id", "firmware_version", "url",
                        "sha256", "size", "signature", "issued_at", "expires_at"}  # fmt: skip
    assert (cmd["job_id"], cmd["device_id"], cmd["firmware_version"]) == (
        job_id, device_id, event["firmware_version"]
    )  # fmt: skip
    assert (cmd["sha256"], cmd["size"]) == (firmware["sha256"], firmware["size"])
    issued, expires = (datetime.fromisoformat(cmd[k]) for k in ("issued_at", "expires_at"))
    assert expires - issued == timedelta(seconds=3600)
    download = requests.get(cmd["url"], timeout=10)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == firmware["sha256"]
    key = signing.verifier()
    assert key is not None and cmd["signature"] == firmware["signature"]
    assert signing.verifies(key, cmd["signature"], download.content)

    status, version, message_id, deadline = job_row(ota_env, job_id)
    assert (status, version, message_id) == ("dispatched", event["version"] + 1, cmd["message_id"])
    assert deadline is not None
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "dispatched" and job["message_id"] == cmd["message_id"]
    last = outbox_rows(ota_env, [device_id])[-1]
    assert last[0] == "job.updated" and last[2]["status"] == "dispatched"
    assert last[2]["changes"] == {"status": "dispatched", "message_id": cmd["message_id"]}
    (history,) = sql(
        ota_env,
        "SELECT type, status FROM ota.job_events WHERE job_id = %s ORDER BY id DESC LIMIT 1",
        (job_id,),
    )
    assert history == ("job.updated", "dispatched")


def test_the_link_expiry_follows_the_setting(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands]
) -> None:
    os.environ["OTA_URL_EXPIRY_SECONDS"] = "120"
    settings.reset()
    event = ready_job()
    subscriber = commands(event["device_id"])
    assert post_event(dispatcher, event).status_code == 204
    (cmd,) = wait_for(lambda: subscriber.of(event["device_id"]), what="the command")
    issued, expires = (datetime.fromisoformat(cmd[k]) for k in ("issued_at", "expires_at"))
    assert expires - issued == timedelta(seconds=120)
    assert "X-Amz-Expires=120" in cmd["url"]


def test_a_duplicate_ready_event_publishes_nothing_new(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands],
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    event = ready_job()
    device_id = event["device_id"]
    subscriber = commands(device_id)
    # Five deliveries of one event at once (distinct CloudEvent ids pass the adapter's
    # pre-check), then one more after the job was dispatched.
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _n: post_event(dispatcher, event).status_code, range(5)))
    assert set(answers) <= {204, 503} and 204 in answers
    wait_for(lambda: job_row(ota_env, event["job_id"])[0] == "dispatched", what="dispatched")
    assert post_event(dispatcher, event).status_code == 204
    subscriber.settle(device_id)
    assert len(subscriber.of(device_id)) == 1
    updates = [r for r in outbox_rows(ota_env, [device_id]) if r[0] == "job.updated"]
    assert len(updates) == 1


def test_other_job_events_and_stale_readiness_are_acknowledged_untouched(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands], api: Any,
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    event = ready_job()
    device_id = event["device_id"]
    subscriber = commands(device_id)
    created = {**event, "type": "job.created", "status": "scheduled", "version": 1}
    assert post_event(dispatcher, created).status_code == 204
    older = {**event, "version": event["version"] - 1}
    assert post_event(dispatcher, older).status_code == 204
    cancelled = api.post(
        f"/jobs/{event['job_id']}/cancel", headers={"If-Match": str(event["version"])}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert post_event(dispatcher, {**event, "version": event["version"] + 1}).status_code == 204
    subscriber.settle(device_id)
    assert subscriber.of(device_id) == []
    assert job_row(ota_env, event["job_id"])[0] == "cancelled"


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("not json", 400, "bad-event"),
        ("missing field", 422, "invalid-data"),
        ("unknown job", 422, "invalid-data"),
        ("another device", 422, "invalid-data"),
        ("type contradicts data", 422, "invalid-data"),
        ("foreign type", 400, "bad-event"),
    ],
)
def test_bad_events_are_refused_and_change_nothing(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands],
    ota_env: dict[str, str], case: str, status: int, error: str,
) -> None:  # fmt: skip
    import uuid

    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    event = ready_job()
    device_id = event["device_id"]
    subscriber = commands(device_id)
    before = (job_row(ota_env, event["job_id"]), outbox_rows(ota_env, [device_id]))
    if case == "not json":
        attributes = {"type": "objectflow.ota.job.ready_to_execute.v1", "source": "/t",
                      "id": str(uuid.uuid4()), "datacontenttype": "application/json"}  # fmt: skip
        headers, _body = to_binary(CloudEvent(attributes, None))
        response = dispatcher.post("/", headers=headers, data=b"{not json")
    elif case == "missing field":
        response = post_event(dispatcher, {k: v for k, v in event.items() if k != "version"},
                              ce_type="objectflow.ota.job.ready_to_execute.v1")  # fmt: skip
    elif case == "unknown job":
        response = post_event(dispatcher, {**event, "job_id": str(uuid.uuid4())})
    elif case == "another device":
        response = post_event(dispatcher, {**event, "device_id": "someone-else"})
    elif case == "type contradicts data":
        response = post_event(dispatcher, event, ce_type="objectflow.ota.job.created.v1")
    else:
        response = post_event(dispatcher, event, ce_type="objectflow.echo.requested.v1")
    assert response.status_code == status, response.text
    assert response.get_json()["error"] == error
    subscriber.settle(device_id)
    assert subscriber.of(device_id) == []
    assert (job_row(ota_env, event["job_id"]), outbox_rows(ota_env, [device_id])) == before


def test_the_rate_limit_spreads_commands_and_answers_503_with_retry_after(
    dispatcher: Any, ready_job: MakeJob, device: Callable[..., str],
    commands: Callable[..., Commands],
) -> None:  # fmt: skip
    os.environ["OTA_DISPATCH_RATE"] = "5"
    settings.reset()
    events = [ready_job() for _ in range(12)]
    subscriber = commands(*(e["device_id"] for e in events))
    limited = 0
    for event in events:
        while (response := post_event(dispatcher, event)).status_code == 503:
            assert response.get_json()["error"] == "rate-limited"
            assert response.headers["Retry-After"] == "1"
            limited += 1
            time.sleep(0.05)  # a client pacing its retries, as the source's backoff does
        assert response.status_code == 204, response.text
    wait_for(lambda: len(subscriber.times()) == 12, what="12 commands")
    times = sorted(subscriber.times())
    assert limited > 0
    # 5 per moving second: the 6th waits for the 1st to leave the window, the 11th for the 6th.
    assert times[-1] - times[0] >= 1.9
    assert all(times[i + 5] - times[i] >= 0.9 for i in range(len(times) - 5))


def test_a_rollouts_jobs_leave_no_faster_than_its_max_per_minute(
    api: Any, dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands],
    firmware: str, ota_env: dict[str, str],
) -> None:  # fmt: skip
    """Jobs of a rollout with max_per_minute 30 that all became ready at once (a backlog): in
    no window of w seconds do more leave than its release bucket allows (a burst of 5 plus w
    seconds of the rate); the rest are 503s and stay ready."""
    from functions.ota import dispatcher as module

    events = [ready_job() for _ in range(12)]
    devices = [e["device_id"] for e in events]
    answer = api.post("/rollouts", json={"firmware_version": firmware, "devices": devices,
                                         "waves": [100], "max_per_minute": 30})  # fmt: skip
    assert answer.status_code == 201, answer.text  # its devices never sent telemetry: offline,
    rid = answer.json()["id"]  # so it releases nothing itself; the jobs above become its own
    sql(ota_env, "UPDATE ota.jobs SET rollout_id = %s WHERE id = ANY(%s::uuid[])",
        (rid, [e["job_id"] for e in events]))  # fmt: skip
    subscriber = commands(*devices)
    sent: list[float] = []
    refused = []
    for event in events:
        response = post_event(dispatcher, event)
        if response.status_code == 204:
            sent.append(time.monotonic())
            continue
        assert response.status_code == 503, response.text
        assert response.get_json()["error"] == "rate-limited", response.text
        assert f"rollout {rid}" in response.get_json()["detail"]
        assert response.headers["Retry-After"] == "1"
        refused.append(event)
    assert refused and len(sent) >= 5
    for w in module.ROLLOUT_WINDOWS:
        most = max(sum(1 for t in sent[n:] if t - start < w) for n, start in enumerate(sent))
        # timed at the answers, after the publish: a command of slack for its jitter
        assert most <= int(5 + 30 * w / 60) + 1, (w, most)
    wait_for(lambda: len(subscriber.times()) == len(sent), what=f"{len(sent)} commands")
    for event in refused:
        assert job_row(ota_env, event["job_id"])[0] == "ready"
        assert subscriber.of(event["device_id"]) == []


def test_the_breaker_opens_on_an_unreachable_broker_and_half_opens_after_its_cool_down(
    dispatcher: Any, ready_job: MakeJob, commands: Callable[..., Commands],
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    from functions.ota import dispatcher as module

    real_broker = os.environ["MQTT_BROKER_URL"]
    os.environ["MQTT_BROKER_URL"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    os.environ["OTA_BREAKER_FAILURES"] = "3"
    os.environ["OTA_BREAKER_RESET_S"] = "2"
    settings.reset()
    module.channel.cache_clear()
    event = ready_job()
    for _ in range(3):
        failed = post_event(dispatcher, event)
        assert failed.status_code == 503 and failed.get_json()["dependency"] == "mqtt"
    started = time.monotonic()
    refused = post_event(dispatcher, event)
    elapsed = time.monotonic() - started
    assert refused.status_code == 503 and "breaker open" in refused.get_json()["detail"]
    assert elapsed < 0.2, f"an open breaker answered after {elapsed:.3f}s"
    assert job_row(ota_env, event["job_id"])[0] == "ready"

    # The broker is back; after the cool-down one publish is let through and closes it.
    os.environ["MQTT_BROKER_URL"] = real_broker
    settings.reset()
    subscriber = commands(event["device_id"])
    wait_for(lambda: post_event(dispatcher, event).status_code == 204, timeout=10,
             interval=0.5, what="the half-open breaker letting the command through")  # fmt: skip
    assert module.channel().breaker.current_state == "closed"
    wait_for(lambda: subscriber.of(event["device_id"]), what="the command")
    assert job_row(ota_env, event["job_id"])[0] == "dispatched"
