"""The watcher service's RabbitMQ messages, unchanged for its downstream consumers.

Topic exchange `RABBITMQ_EXCHANGE` (thermo_exchange) in vhost `RABBITMQ_VHOST` (/thermo),
routing key `RAW_ROUTING_KEY` (raw.created) or `PROCESSED_ROUTING_KEY` (processed.created),
persistent JSON, published with confirms (functions.runtime.clients.rabbitmq).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from functions.camera import settings as camera_settings
from functions.camera.records import ImageObject
from functions.runtime import clients
from functions.runtime.errors import InvalidData

MESSAGE_NAMESPACE = uuid.UUID("0d7c8f0e-5a1b-4e8e-9a8c-2b9f3f6c1a77")


@dataclass(frozen=True)
class Stage:
    """What an object in a bucket means: its status and the routing key announcing it."""

    status: str
    routing_key: str


def stage(bucket: str) -> Stage:
    minio, routing = camera_settings.buckets(), camera_settings.routing()
    if bucket == minio.raw_bucket:
        return Stage("pending", routing.raw_routing_key)
    if bucket == minio.processed_bucket:
        return Stage(camera_settings.camera().processed_status, routing.processed_routing_key)
    raise InvalidData(
        f"bucket {bucket!r} is not watched (MINIO_RAW_BUCKET={minio.raw_bucket}, "
        f"MINIO_PROCESSED_BUCKET={minio.processed_bucket})",
        field="bucket",
    )


@dataclass(frozen=True)
class Written:
    """The object an announcement is about: the one a notification says was written."""

    bucket: str
    object_key: str
    status: str  # what that object means for the image (its stage's status)
    size: int | None
    etag: str | None

    @classmethod
    def current(cls, item: ImageObject) -> Written:
        """The object the row describes now (what reconciliation announces again)."""
        return cls(item.bucket, item.object_key, item.status, item.size, item.etag)


def body(item: ImageObject, written: Written, routing_key: str, event_time: datetime) -> bytes:
    """The row's ids, and the bucket, key, status, size and etag of the object written."""
    return json.dumps(
        {
            "eventType": routing_key,
            "imageObjectId": item.id,
            "deviceId": item.device_id,
            "deviceUid": item.device_uid,
            "bucket": written.bucket,
            "objectKey": written.object_key,
            "status": written.status,
            "size": written.size,
            "etag": written.etag,
            "eventTime": event_time.isoformat().replace("+00:00", "Z"),
        }
    ).encode()


def publish(
    item: ImageObject,
    written: Written,
    routing_key: str,
    event_time: datetime,
    *,
    dedupe_key: str,
    traceparent: str | None,
) -> None:
    """Publish and wait for the confirm; `dedupe_key` makes the AMQP message id stable."""
    message_id = str(uuid.uuid5(MESSAGE_NAMESPACE, dedupe_key))
    headers = {"traceparent": traceparent} if traceparent else None
    message = body(item, written, routing_key, event_time)
    clients.rabbitmq.publish(routing_key, message, headers=headers, message_id=message_id)
