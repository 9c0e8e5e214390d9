"""Device statuses end to end through the running runtime: MQTT status/<id>/update -> MQTT
bridge -> Kafka device.status -> Kafka source -> broker -> ota-status -> the job row; the
simulator answering commands with a real presigned URL; bad records in device.status.dlq.

The dispatcher is not part of these tests: jobs are put in `dispatched` by SQL and the
commands published here, as ota-dispatcher would (docs/ota.md, "Device protocol")."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests

from devstack.ota import sim
from functions.ota.statuses import RANK
from tests.ota_support import JobEvents, sql
from tests.support import s3_client, wait_for


@pytest.fixture
def mqtt_client(stack_env: dict[str, str]) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-{uuid.uuid4().hex}")
    client.username_pw_set(stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def publish(client: mqtt.Client, topic: str, payload: dict[str, Any]) -> None:
    client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=10)


def dispatched_jobs(
    ota_api: str, env: dict[str, str], device_ids: list[str], firmware: str
) -> dict[str, str]:
    """device id -> job id of a mass update due tomorrow (the scheduler leaves it alone), put
    in `dispatched` as the dispatcher would."""
    due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    answer = requests.post(
        f"{ota_api}/jobs",
        json={"device_ids": device_ids, "firmware_version": firmware, "schedule_time": due},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    jobs = {job["device_id"]: job["id"] for job in answer.json()["jobs"]}
    sql(env, "UPDATE ota.jobs SET status = 'dispatched', version = version + 1 "
        "WHERE id = ANY(%s::uuid[])", (list(jobs.values()),))  # fmt: skip
    return jobs


def statuses(env: dict[str, str], job_ids: list[str]) -> dict[str, str]:
    rows = sql(env, "SELECT id::text, status FROM ota.jobs WHERE id = ANY(%s::uuid[])",
               (job_ids,))  # fmt: skip
    return dict(rows)


def test_a_status_published_on_mqtt_reaches_the_job_row(
    ota_api: str, firmware: str, devices: Callable[..., list[str]],
    stack_env: dict[str, str], mqtt_client: mqtt.Client,
) -> None:  # fmt: skip
    [device] = devices(1)
    job_id = dispatched_jobs(ota_api, stack_env, [device], firmware)[device]
    events = JobEvents(stack_env)
    try:
        now = datetime.now(UTC).isoformat()
        for kind in ("downloading", "flashing", "done"):
            status = {"job_id": job_id, "message_id": "cmd-1", "status": kind, "ts": now}
            publish(mqtt_client, f"status/{device}/update", status)
        wait_for(lambda: statuses(stack_env, [job_id])[job_id] == "done", timeout=30,
                 what="the job done")  # fmt: skip

        def completions() -> list[tuple[str, str]]:  # job.created may still be on its way
            return [(r.value["type"], r.value["outcome"]) for r in events.of([device])
                    if r.value["type"] == "job.completed"]  # fmt: skip

        wait_for(completions, timeout=30, what="job.completed")
        assert completions() == [("job.completed", "done")]
    finally:
        events.close()
    device_row = requests.get(f"{ota_api}/devices/{device}", timeout=10).json()
    assert device_row["current_firmware"] == firmware
    applied = sql(stack_env, "SELECT detail->>'status' FROM ota.job_events WHERE job_id = %s "
                  "AND type = 'status.applied' ORDER BY id", (job_id,))  # fmt: skip
    assert [row[0] for row in applied] == ["downloading", "flashing", "done"]


def test_records_that_can_never_apply_reach_the_dlq_through_kafka(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> None:
    from kafka import KafkaProducer

    device, other = devices(2)
    job_id = dispatched_jobs(ota_api, stack_env, [device], firmware)[device]
    dlq = JobEvents(stack_env, topic="device.status.dlq")
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        now = datetime.now(UTC).isoformat()
        good = {"job_id": job_id, "message_id": "cmd-1", "status": "downloading", "ts": now}
        for key, value in (
            (device, b"not json at all"),
            (other, json.dumps(good).encode()),
            (device, json.dumps({**good, "status": "rebooting"}).encode()),
        ):
            producer.send("device.status", key=key.encode(), value=value).get(timeout=10)
        wait_for(lambda: len(dlq.of([device, other])) >= 3, timeout=30, what="3 DLQ records")
        reasons = sorted((r.key, r.value["reason"]) for r in dlq.of([device, other]))
        assert reasons == sorted([(device, "not-json"), (other, "wrong-device"),
                                  (device, "unknown-status")])  # fmt: skip
        assert statuses(stack_env, [job_id])[job_id] == "dispatched"
    finally:
        producer.close()
        dlq.close()


def test_simulated_devices_download_verify_and_report_over_a_flaky_link(
    ota_api: str, stack_env: dict[str, str], mqtt_client: mqtt.Client
) -> None:
    run = uuid.uuid4().hex[:8]
    ids = [f"sim-{run}-{n:02d}" for n in range(20)]
    assert asyncio.run(sim.register(ota_api, ids)) == []
    version = f"fw-{run}"
    firmware = requests.put(f"{ota_api}/firmwares/{version}", data=b"\x7fFW" * 40_000, timeout=10)
    assert firmware.status_code == 201, firmware.text
    fw = firmware.json()
    url = s3_client(stack_env).generate_presigned_url(
        "get_object", Params={"Bucket": "firmware", "Key": fw["key"]}, ExpiresIn=600
    )
    jobs = dispatched_jobs(ota_api, stack_env, ids, version)
    broker = sim.Broker("127.0.0.1", 1883, stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    behaviour = sim.Behaviour(firmware_ms=200, fail_rate=0.2, dup_rate=0.1, reorder_rate=0.1,
                              delay_ms=50, disconnect_rate=0.05, seed=7)  # fmt: skip
    stats, stop = sim.Stats(), threading.Event()
    runner = threading.Thread(target=lambda: asyncio.run(
        sim.simulate(ids, broker, behaviour, stats, until=stop.is_set)))  # fmt: skip
    runner.start()
    try:
        wait_for(lambda: stats.connected == len(ids), timeout=30, what="20 devices connected")
        for device_id, job_id in jobs.items():
            bad = device_id == ids[0]  # this one's command names other bytes: sha256 mismatch
            publish(mqtt_client, sim.command_topic(device_id), {
                "message_id": str(uuid.uuid4()), "job_id": job_id, "device_id": device_id,
                "firmware_version": version, "url": url, "size": fw["size"],
                "sha256": "0" * 64 if bad else fw["sha256"],
                "issued_at": datetime.now(UTC).isoformat(),
                "expires_at": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
            })  # fmt: skip
        wait_for(lambda: len(stats.finished) == len(ids), timeout=60, what="every device done")
        wait_for(
            lambda: (
                statuses(stack_env, list(jobs.values()))
                == {jobs[d]: outcome for d, outcome in stats.finished.items()}
            ),
            timeout=60,
            what="every job as its device ended",
        )
    finally:
        stop.set()
        runner.join(timeout=30)
    assert stats.finished[ids[0]] == "error"
    assert stats.link["duplicated"] + stats.link["reordered"] > 0  # the link did misbehave
    for device_id, job_id in jobs.items():
        applied = sql(stack_env, "SELECT detail->>'status' FROM ota.job_events WHERE job_id = %s "
                      "AND type = 'status.applied' ORDER BY id", (job_id,))  # fmt: skip
        ranks = [RANK[row[0]] for row in applied]
        assert ranks == sorted(set(ranks)), (device_id, applied)  # forward only, never twice
        completed = sql(
            stack_env,
            "SELECT payload->>'outcome' FROM ota.event_outbox WHERE aggregate_id = %s "
            "AND event_type = 'job.completed'",
            (job_id,),
        )
        assert completed == [(stats.finished[device_id],)]
    current = sql(stack_env, "SELECT device_id FROM ota.devices WHERE device_id = ANY(%s) "
                  "AND current_firmware = %s", (ids, version))  # fmt: skip
    assert {row[0] for row in current} == {d for d, o in stats.finished.items() if o == "done"}
