"""Device statuses end to end through the running runtime: MQTT status/<id>/update -> MQTT
bridge -> Kafka device.status -> Kafka source -> broker -> ota-status -> the job row; the
simulator answering commands with a real presigned URL; bad records in device.status.dlq.

The dispatcher is not part of these tests: jobs are put in `dispatched` by SQL and the
commands published here, as ota-dispatcher would (docs/ota.md, "Device protocol")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import requests

from devstack.ota import sim
from functions.ota.statuses import RANK
from tests.ota_support import JobEvents, dispatched_jobs, publish, sql, statuses
from tests.support import s3_client, scaled, wait_for


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
    """Each kind of bad input the issue names, in device.status.dlq with its reason; no job
    changed."""
    from kafka import KafkaProducer

    device, other, idle = devices(3)
    job_id = dispatched_jobs(ota_api, stack_env, [device], firmware)[device]
    due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    answer = requests.post(f"{ota_api}/jobs", timeout=30, json={
        "device_ids": [idle], "firmware_version": firmware, "schedule_time": due})  # fmt: skip
    assert answer.status_code == 201, answer.text
    idle_job = answer.json()["jobs"][0]["id"]  # scheduled: never dispatched
    rows = "SELECT id::text, status, version, updated_at FROM ota.jobs WHERE id = ANY(%s::uuid[])"
    before = sql(stack_env, rows, ([job_id, idle_job],))
    dlq = JobEvents(stack_env, topic="device.status.dlq")
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        now = datetime.now(UTC).isoformat()
        good = {"job_id": job_id, "message_id": "cmd-1", "status": "downloading", "ts": now}
        for key, value in (
            (device, b"not json at all"),
            (device, json.dumps({**good, "job_id": str(uuid.uuid4())}).encode()),
            (other, json.dumps(good).encode()),
            (device, json.dumps({**good, "status": "rebooting"}).encode()),
            (idle, json.dumps({**good, "job_id": idle_job, "status": "done"}).encode()),
        ):
            producer.send("device.status", key=key.encode(), value=value).get(timeout=10)
        mine = [device, other, idle]
        wait_for(lambda: len(dlq.of(mine)) >= 5, timeout=30, what="5 DLQ records")
        reasons = sorted((r.key, r.value["reason"]) for r in dlq.of(mine))
        assert reasons == sorted([(device, "not-json"), (device, "unknown-job"),
                                  (other, "wrong-device"), (device, "unknown-status"),
                                  (idle, "never-dispatched")])  # fmt: skip
        assert sql(stack_env, rows, ([job_id, idle_job],)) == before
    finally:
        producer.close()
        dlq.close()


def test_replaying_the_whole_device_status_topic_from_offset_0_changes_no_job(
    stack_env: dict[str, str],
) -> None:
    """Every record device.status holds (every run's, everyone's) produced again: the jobs
    they name keep their status and version, no status is applied, no job completes again."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    servers = stack_env["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    reader = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    partitions = [TopicPartition("device.status", p)
                  for p in sorted(reader.partitions_for_topic("device.status") or ())]  # fmt: skip
    reader.assign(partitions)
    reader.seek_to_beginning(*partitions)
    ends = reader.end_offsets(partitions)
    records = []
    while any(reader.position(tp) < ends[tp] for tp in partitions):
        for batch in reader.poll(timeout_ms=1000, max_records=5000).values():
            records.extend(
                r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)]
            )
    reader.close()
    job_ids = set()
    for record in records:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            job_ids.add(str(uuid.UUID(json.loads(record.value)["job_id"])))
    # Jobs that are final stay as they are whatever arrives; an unfinished one may still time
    # out meanwhile (ota-deadlines), which is no status applied, so only its statuses count.
    final = sorted(j for (j,) in sql(stack_env, "SELECT id::text FROM ota.jobs WHERE id = "
                   "ANY(%s::uuid[]) AND status IN ('done', 'error', 'timed_out', 'cancelled')",
                   (sorted(job_ids),)))  # fmt: skip
    assert final, "device.status names no finished job"

    def snapshot() -> tuple[Any, ...]:
        jobs = sql(stack_env, "SELECT id::text, status, version, updated_at FROM ota.jobs "
                   "WHERE id = ANY(%s::uuid[]) ORDER BY id", (final,))  # fmt: skip
        changes = sql(stack_env, "SELECT count(*) FROM ota.job_events WHERE job_id = "
                      "ANY(%s::uuid[]) AND type = 'status.applied'",
                      (sorted(job_ids),))  # fmt: skip
        ends = sql(stack_env, "SELECT count(*) FROM ota.event_outbox WHERE aggregate_id = "
                   "ANY(%s) AND event_type = 'job.completed'", (final,))  # fmt: skip
        return jobs, changes, ends

    before = snapshot()
    dlq = JobEvents(stack_env, topic="device.status.dlq")
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    marker = f"replayed-{uuid.uuid4().hex[:8]}"
    try:
        for record in records:  # in each partition's order, to the same partition
            producer.send("device.status", key=record.key, value=record.value,
                          partition=record.partition)  # fmt: skip
        for tp in partitions:  # after the replay in every partition: a record the DLQ takes
            producer.send("device.status", key=marker.encode(), value=marker.encode(),
                          partition=tp.partition)  # fmt: skip
        producer.flush(timeout=60)
        wait_for(lambda: len(dlq.of([marker])) >= len(partitions),
                 timeout=scaled(120, 600), interval=1,
                 what=f"the replay of {len(records)} records handled")  # fmt: skip
    finally:
        producer.close()
        dlq.close()
    assert snapshot() == before


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
                "sha256": "0" * 64 if bad else fw["sha256"], "signature": fw["signature"],
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
