"""Helpers of the OTA tests: SQL on the real PostgreSQL, a Kafka reader of `job.events`, and
unique ids so concurrent test runs never meet."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
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
