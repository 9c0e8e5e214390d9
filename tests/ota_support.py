"""Helpers of the OTA tests: SQL on the real PostgreSQL, a Kafka reader of `job.events`, and
unique ids so concurrent test runs never meet."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from tests.support import s3_client, wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sql(env: dict[str, str], query: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in its own committed transaction; the rows it returns, if any."""
    dsn = (
        f"postgresql://{env['DB_USER']}:{env['DB_PASSWORD']}@{env['DB_HOST']}:{env['DB_PORT']}"
        f"/{env['DB_NAME']}"
    )
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, tuple(params))
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def outbox_rows(env: dict[str, str], device_ids: list[str]) -> list[tuple[Any, ...]]:
    """(event_type, aggregate_id, payload) of the devices' outbox rows, in relay order."""
    return sql(
        env,
        "SELECT event_type, aggregate_id, payload FROM ota.event_outbox "
        "WHERE partition_key = ANY(%s) ORDER BY txid, id",
        (device_ids,),
    )


def ensure_bucket(env: dict[str, str], bucket: str = "firmware") -> None:
    s3 = s3_client(env)
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)


@dataclass(frozen=True)
class Record:
    key: str
    value: dict[str, Any]
    headers: dict[str, str]
    partition: int
    offset: int


class JobEvents:
    """Reads a topic from the end as it was when opened; `of(devices)` keeps the devices'."""

    def __init__(self, env: dict[str, str], topic: str = "job.events") -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"].split(","),
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=200,
        )
        partitions = self.consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        self.consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the end offsets now, before anything is produced
            self.consumer.position(tp)
        self.records: list[Record] = []

    def poll(self) -> list[Record]:
        for batch in self.consumer.poll(timeout_ms=300, max_records=5000).values():
            for r in batch:
                try:
                    value = json.loads(r.value)
                except ValueError:
                    value = {"raw": r.value.decode(errors="replace")}
                headers = {k: v.decode(errors="replace") for k, v in r.headers or []}
                key = r.key.decode() if r.key else ""
                self.records.append(Record(key, value, headers, r.partition, r.offset))
        return self.records

    def of(self, devices: Iterable[str]) -> list[Record]:
        wanted = set(devices)
        return [r for r in self.poll() if r.key in wanted]

    def wait(self, devices: Iterable[str], count: int, timeout: float = 30) -> list[Record]:
        """The devices' records once there are at least `count` distinct event ids."""
        wanted = list(devices)
        wait_for(
            lambda: len({r.value.get("event_id") for r in self.of(wanted)}) >= count,
            timeout=timeout,
            what=f"{count} events of {len(wanted)} device(s)",
        )
        return self.of(wanted)

    def close(self) -> None:
        self.consumer.close()


class Commands:
    """An authenticated MQTT subscriber of `commands/<device>/ota` for the given devices,
    recording each command with its arrival time (time.monotonic()).

    `persistent`: a named session that outlives a broker restart (Mosquitto keeps it), so
    commands published while this client is cut off still arrive."""

    def __init__(self, devices: Iterable[str], *, persistent: bool = False) -> None:
        import threading
        import time

        from functions.runtime.clients import mqtt

        self.received: list[tuple[float, str, dict[str, Any]]] = []
        self.traceparents: dict[str, str | None] = {}  # by message_id: the MQTT 5 property
        self._lock = threading.Lock()

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            command = json.loads(message.payload)
            with self._lock:
                self.received.append((time.monotonic(), message.topic, command))
                self.traceparents[command.get("message_id")] = mqtt.traceparent(message)

        self.client_id = unique("ota-test") if persistent else ""
        self.client = mqtt.connect(
            self.client_id, clean_start=not persistent, on_message=on_message
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)  # back soon after an outage
        acked: set[int] = set()
        self.client.on_subscribe = lambda _c, _u, mid, _codes, _p: acked.add(mid)
        mids = {self.client.subscribe(f"commands/{d}/ota", qos=1)[1] for d in devices}
        wait_for(lambda: mids <= acked, timeout=10, what="SUBACK of the command topics")

    def of(self, device_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c for _t, topic, c in self.received if topic == f"commands/{device_id}/ota"]

    def times(self) -> list[float]:
        with self._lock:
            return [t for t, _topic, _c in self.received]

    def first_arrivals(self) -> list[float]:
        """When each device's first command arrived (time.monotonic()), in order."""
        with self._lock:
            first = {topic: t for t, topic, _c in reversed(self.received)}
        return sorted(first.values())

    def settle(self, device_id: str) -> None:
        """Wait until a marker this test publishes after the fact has arrived on the device's
        topic: any command published before it (the broker acknowledged it) arrived first."""
        from functions.runtime.clients import mqtt

        marker = unique("marker")
        mqtt.Publisher(self.client).publish(
            f"commands/{device_id}/ota", json.dumps({"marker": marker}).encode()
        )
        wait_for(lambda: {"marker": marker} in self.of(device_id), what=f"marker on {device_id}")
        with self._lock:
            self.received = [r for r in self.received if r[2] != {"marker": marker}]

    def close(self) -> None:
        from functions.runtime.clients import mqtt

        self.client.loop_stop()
        self.client.disconnect()
        if self.client_id:  # end the persistent session on the broker too
            mqtt.connect(self.client_id, clean_start=True).disconnect()


def ready_event(job: dict[str, Any]) -> dict[str, Any]:
    """The job.ready_to_execute record value of `job` (an ota-api job) at its version."""
    return {
        "event_id": str(uuid.uuid4()),
        "type": "job.ready_to_execute",
        "job_id": job["id"],
        "device_id": job["device_id"],
        "firmware_version": job["firmware_version"],
        "status": job["status"],
        "version": job["version"],
        "schedule": job["schedule"],
        "occurred_at": job["updated_at"],
    }


def post_event(client: Any, data: dict[str, Any], ce_type: str | None = None) -> Any:
    """POST `data` as the binary CloudEvent the Kafka source makes of a job.events record."""
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    attributes = {
        "type": ce_type or f"objectflow.ota.{data['type']}.v1",
        "source": "/objectflow/ota",
        "id": str(uuid.uuid4()),
        "subject": data.get("job_id"),
    }
    headers, body = to_binary(CloudEvent(attributes, data))
    return client.post("/", headers=headers, data=body)


def publish(client: Any, topic: str, payload: dict[str, Any]) -> None:
    """One QoS 1 publish, returned once the broker acknowledged it."""
    client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=10)


def dispatched_jobs(
    ota_api: str, env: dict[str, str], device_ids: list[str], firmware: str
) -> dict[str, str]:
    """device id -> job id of a mass update due tomorrow (the scheduler leaves it alone), put
    in `dispatched` as the dispatcher would."""
    import requests

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
    """job id -> its status."""
    rows = sql(env, "SELECT id::text, status FROM ota.jobs WHERE id = ANY(%s::uuid[])",
               (job_ids,))  # fmt: skip
    return dict(rows)


def applied(env: dict[str, str], job_ids: list[str]) -> dict[str, list[str]]:
    """job id -> the statuses ota-status applied to it, in the order it applied them."""
    rows = sql(env, "SELECT job_id::text, detail->>'status' FROM ota.job_events "
               "WHERE job_id = ANY(%s::uuid[]) AND type = 'status.applied' ORDER BY id",
               (job_ids,))  # fmt: skip
    found: dict[str, list[str]] = {j: [] for j in job_ids}
    for job_id, status in rows:
        found[job_id].append(status)
    return found
