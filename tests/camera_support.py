"""What camera tests look at: the real Redis, MinIO, PostgreSQL and RabbitMQ state of a camera."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pika
import psycopg2
import redis

from tests.support import s3_client


class BoundQueue:
    """A queue bound to thermo_exchange before anything is published, so nothing is missed.

    `durable` queues survive a RabbitMQ restart (the outage tests); others are exclusive.
    """

    def __init__(self, env: dict[str, str], routing_keys: list[str], durable: bool = False):
        self.env = env
        self.name = f"tests.camera.{uuid.uuid4().hex[:12]}"
        self.durable = durable
        self.seen: list[dict[str, Any]] = []
        channel = self._connect()
        channel.queue_declare(self.name, durable=durable, exclusive=not durable)
        for key in routing_keys:
            channel.queue_bind(self.name, env["RABBITMQ_EXCHANGE"], routing_key=key)

    def _connect(self) -> Any:
        params = pika.ConnectionParameters(
            host=self.env["RABBITMQ_HOST"],
            port=int(self.env["RABBITMQ_PORT"]),
            virtual_host=self.env["RABBITMQ_VHOST"],
            credentials=pika.PlainCredentials(
                self.env["RABBITMQ_USER"], self.env["RABBITMQ_PASSWORD"]
            ),
            heartbeat=0,
        )
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        return self.channel

    def messages(self) -> list[dict[str, Any]]:
        """Every message received so far (drains the queue), with its routing key."""
        if not self.connection.is_open:
            self._connect()
        while True:
            method, properties, body = self.channel.basic_get(self.name, auto_ack=True)
            if method is None:
                return self.seen
            message = json.loads(body)
            message["_routing_key"] = method.routing_key
            message["_persistent"] = properties.delivery_mode == 2
            message["_message_id"] = properties.message_id
            message["_traceparent"] = (properties.headers or {}).get("traceparent")
            self.seen.append(message)

    def about(self, object_key: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["objectKey"] == object_key]

    def close(self) -> None:
        try:
            if not self.connection.is_open:
                self._connect()
            if self.durable:
                self.channel.queue_delete(self.name)
            self.connection.close()
        except pika.exceptions.AMQPError:
            pass


def redis_client(env: dict[str, str]) -> redis.Redis:
    return redis.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]))


def objects(env: dict[str, str], camera_uid: str) -> dict[str, bytes]:
    """Every object of a camera in thermo-raw: key -> bytes."""
    s3 = s3_client(env)
    listing = s3.list_objects_v2(Bucket=env["MINIO_RAW_BUCKET"], Prefix=f"{camera_uid}/")
    return {
        o["Key"]: s3.get_object(Bucket=env["MINIO_RAW_BUCKET"], Key=o["Key"])["Body"].read()
        for o in listing.get("Contents", [])
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(env: dict[str, str], camera_uid: str) -> list[dict[str, Any]]:
    """The image_objects rows of a device, with the device uid they are linked to."""
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT o.id, d.device_uid, o.image_id, o.object_key, o.bucket, o.status,
                      o.checksum, o.size, o.republish_count, o.failure_reason
               FROM thermo.image_objects o JOIN thermo.devices d ON d.id = o.device_id
               WHERE d.device_uid = %s ORDER BY o.id""",
            (camera_uid,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def sql(env: dict[str, str], statement: str, *args: Any) -> None:
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(statement, args)


def snapshot(env: dict[str, str], camera_uid: str, image_id: str | None = None) -> dict[str, Any]:
    """Everything Redis, MinIO and PostgreSQL hold about a camera (and a capture of it)."""
    r = redis_client(env)
    session = r.get(f"camera_session:{camera_uid}")
    ids = {i for i in (image_id, session.decode() if session else None) if i}
    keys = {f"camera_session:{camera_uid}".encode()}
    for i in ids:
        keys |= set(r.keys(f"image_chunks:{i}*")) | {f"processed:{i}".encode()}
        # Not the capture's state: the adapter's idempotency keys of its chunks, for a reset.
        keys.discard(f"image_chunks:{i}:events".encode())
    return {
        "redis": {k: r.dump(k) for k in sorted(keys) if r.exists(k)},
        "index": {i: r.zscore("camera_captures", i) for i in ids},
        "objects": sorted(objects(env, camera_uid)),
        "rows": rows(env, camera_uid),
    }
