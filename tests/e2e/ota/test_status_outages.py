"""The device status path with a real service stopped mid-run (issue 16, Must show): Kafka
(statuses wait on MQTT: the bridge acknowledges nothing Kafka does not have), PostgreSQL
(ota-status answers 503, the broker retries: nothing lost, nothing applied twice) and the status
consumer itself — the runtime's Kafka source `ota-device-status` — restarted mid-burst (it
rejoins consumer group `status-processor` within its session timeout and the lag drains).

Each test brings back what it stopped (`start_stack`). Jobs are put in `dispatched` by SQL and
the statuses published here, as devices would (docs/ota.md, "Device protocol"). `make test`
runs the short sizes, `make chaos` the long ones (tests/support.py `scaled`)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psutil
import pytest

from devstack import wiring
from devstack.runtime.supervisor import CHILDREN
from tests.ota_support import applied, dispatched_jobs, publish, sql, statuses
from tests.support import E2E_OVERLAY, scaled, start_stack, stop_service, wait_for

SOURCE = "kafka-source-ota-device-status"  # the supervisor's name of the status consumer
GROUP = "status-processor"
# The session timeout the source runs with: the e2e overlay's (15 s) over kafka-python 3's
# default (45 s since KIP-735), both long enough that a busy machine's pauses cause no
# rebalances of their own.
SESSION_TIMEOUT_S = (
    wiring.load(E2E_OVERLAY).sources.kafka["ota-device-status"].local_session_timeout_ms or 45_000
) / 1000
HEARTBEAT_S = 3.0  # kafka-python's heartbeat.interval.ms
REDEPLOYED_REJOIN_S = 10.0  # a consumer that left the group is replaced at once
STEPS = ["downloading", "flashing", "done"]
pytestmark = pytest.mark.chaos  # short in `make test`, full size in `make chaos`


def report(client: mqtt.Client, jobs: dict[str, str], status: str) -> None:
    now = datetime.now(UTC).isoformat()
    for device, job_id in jobs.items():
        publish(client, f"status/{device}/update",
                {"job_id": job_id, "message_id": "cmd-1", "status": status, "ts": now})  # fmt: skip


def assert_applied_once_in_order(env: dict[str, str], jobs: dict[str, str]) -> None:
    """Every job done through each status once, in order, with one job.completed."""
    job_ids = list(jobs.values())
    assert set(statuses(env, job_ids).values()) == {"done"}
    order = applied(env, job_ids)
    assert all(steps == STEPS for steps in order.values()), {
        j: s for j, s in order.items() if s != STEPS
    }
    completed = sql(env, "SELECT aggregate_id, count(*) FROM ota.event_outbox WHERE "
                    "aggregate_id = ANY(%s) AND event_type = 'job.completed' GROUP BY 1",
                    (job_ids,))  # fmt: skip
    assert dict(completed) == dict.fromkeys(job_ids, 1)
    rows = sql(env, "SELECT count(*) FROM ota.device_statuses WHERE job_id = ANY(%s::uuid[])",
               (job_ids,))  # fmt: skip
    assert rows == [(len(STEPS) * len(job_ids),)]


@pytest.fixture
def outage_jobs(
    ota_api: str, firmware: str, devices: Callable[..., list[str]], stack_env: dict[str, str]
) -> Callable[[int], dict[str, str]]:
    return lambda count: dispatched_jobs(ota_api, stack_env, devices(count), firmware)


def test_statuses_published_while_kafka_is_down_wait_on_mqtt_and_all_apply_after(
    outage_jobs: Callable[[int], dict[str, str]],
    stack_env: dict[str, str],
    mqtt_client: mqtt.Client,
) -> None:
    jobs = outage_jobs(scaled(5, 50))
    job_ids = list(jobs.values())
    report(mqtt_client, jobs, "downloading")
    wait_for(lambda: set(statuses(stack_env, job_ids).values()) == {"downloading"},
             timeout=60, what="every job downloading")  # fmt: skip
    stop_service("kafka")
    try:
        report(mqtt_client, jobs, "flashing")  # Mosquitto has them; Kafka cannot take them
        report(mqtt_client, jobs, "done")
        assert set(statuses(stack_env, job_ids).values()) == {"downloading"}
    finally:
        start_stack()
    wait_for(lambda: set(statuses(stack_env, job_ids).values()) == {"done"},
             timeout=180, interval=0.5, what="every job done after Kafka returned")  # fmt: skip
    assert_applied_once_in_order(stack_env, jobs)


def test_statuses_while_postgresql_is_down_are_retried_none_lost_none_applied_twice(
    outage_jobs: Callable[[int], dict[str, str]],
    stack_env: dict[str, str],
    mqtt_client: mqtt.Client,
) -> None:
    jobs = outage_jobs(scaled(5, 50))
    job_ids = list(jobs.values())
    report(mqtt_client, jobs, "downloading")
    wait_for(lambda: set(statuses(stack_env, job_ids).values()) == {"downloading"},
             timeout=60, what="every job downloading")  # fmt: skip
    stop_service("postgres")
    try:
        report(mqtt_client, jobs, "flashing")
        report(mqtt_client, jobs, "downloading")  # a repeat: changes nothing
        report(mqtt_client, jobs, "done")
    finally:
        start_stack()
    wait_for(lambda: set(statuses(stack_env, job_ids).values()) == {"done"}, timeout=180,
             interval=0.5, what="every job done after PostgreSQL returned")  # fmt: skip
    assert_applied_once_in_order(stack_env, jobs)


def source_pid() -> int:
    return int(json.loads(CHILDREN.read_text())[SOURCE]["pid"])


def group_members(env: dict[str, str]) -> tuple[str, list[str]]:
    """(state, member ids) of consumer group status-processor."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        group = admin.describe_groups([GROUP])[GROUP]
    finally:
        admin.close()
    return group["group_state"], [member["member_id"] for member in group["members"]]


def lag(env: dict[str, str]) -> int:
    """Records of device.status that status-processor has not committed yet."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    servers = env["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers)
    consumer = KafkaConsumer(bootstrap_servers=servers)
    try:
        committed = admin.list_group_offsets({GROUP: None})[GROUP]
        partitions = [TopicPartition("device.status", p)
                      for p in consumer.partitions_for_topic("device.status") or ()]  # fmt: skip
        ends = consumer.end_offsets(partitions)
    finally:
        consumer.close()
        admin.close()
    return sum(end - committed[tp].offset for tp, end in ends.items() if tp in committed)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGTERM, id="redeployed"),  # a rollout: it leaves the group
        pytest.param(signal.SIGKILL, id="crashed"),  # it never says so: its session times out
    ],
)
def test_the_status_consumer_restarted_mid_burst_rejoins_at_once_and_the_lag_drains(
    how: signal.Signals,
    outage_jobs: Callable[[int], dict[str, str]],
    stack_env: dict[str, str],
    mqtt_client: mqtt.Client,
) -> None:
    jobs = outage_jobs(scaled(60, 300))
    job_ids = list(jobs.values())
    state, before = group_members(stack_env)
    assert state == "Stable" and len(before) == 1
    old = source_pid()
    for status in STEPS:  # the burst: every device's statuses queued on Kafka at once
        report(mqtt_client, jobs, status)
    wait_for(lambda: any(s != "dispatched" for s in statuses(stack_env, job_ids).values()),
             timeout=60, interval=0.05, what="the burst being applied")  # fmt: skip
    unfinished = sum(s != "done" for s in statuses(stack_env, job_ids).values())
    os.kill(old, how)
    assert unfinished > 0, "the burst was over before the restart"
    new = wait_for(lambda: (pid := source_pid()) != old and pid, timeout=60,
                   what="the supervisor restarting the source")  # fmt: skip
    started = psutil.Process(new).create_time()
    state, members = wait_for(
        lambda: (g := group_members(stack_env))[0] == "Stable" and set(g[1]) - set(before) and g,
        timeout=60, interval=0.2, what="the new consumer in a stable group",
    )  # fmt: skip
    rejoined = time.time() - started
    assert len(members) == 1  # the old member is gone: one consumer, no storm of rebalances
    # A crashed member holds the group until its session times out (counted from its last
    # heartbeat, so from about when it was killed; the coordinator notices and syncs the group
    # within a heartbeat interval after); a redeployed one left it.
    limit = SESSION_TIMEOUT_S + HEARTBEAT_S if how == signal.SIGKILL else REDEPLOYED_REJOIN_S
    assert rejoined <= limit, f"rejoined {rejoined:.1f} s after it started"
    wait_for(lambda: set(statuses(stack_env, job_ids).values()) == {"done"},
             timeout=120, interval=0.5, what="every job done after the restart")  # fmt: skip
    wait_for(lambda: lag(stack_env) == 0, timeout=30, what="status-processor's lag drained")
    assert group_members(stack_env)[1] == members  # stayed the one member: no rebalance since
    assert_applied_once_in_order(stack_env, jobs)
