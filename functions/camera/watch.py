"""camera-watch — MinIO object-created notifications of the raw and processed buckets.

Source document 000's watcher: find the device (the object's `device-uid` metadata, else the
first key segment), upsert the device and the image row (raw -> pending, processed ->
processing), then announce the object on RabbitMQ with a publisher confirm. Each write is
announced once, describing the object that was written: a redelivered notification publishes
nothing new. Captures camera-ingest quarantined (the `CAMERA_QUARANTINE_PREFIX` of the raw
bucket) are never announced.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from functions.camera import messages, metrics, records
from functions.camera import settings as camera_settings
from functions.camera.events import SAFE_SEGMENT
from functions.runtime import clients
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.errors import InvalidData
from functions.sources.events import S3ObjectCreated

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.camera.watch")


def device_uid(obj: S3ObjectCreated) -> str:
    """From the `device-uid` metadata, else the first segment of `<device_uid>/.../<file>`."""
    candidate = obj.user_metadata.get("device-uid")
    where = "metadata device-uid"
    if candidate is None:
        segments = obj.key.split("/")
        candidate = segments[0] if len(segments) > 1 else ""
        where = "the first segment of the object key"
    if not re.fullmatch(SAFE_SEGMENT, candidate):
        raise InvalidData(
            f"no usable device uid in {where} of {obj.bucket}/{obj.key} "
            "(expected <device_uid>/<file> or x-amz-meta-device-uid)",
            field="key",
        )
    return candidate


def version(obj: S3ObjectCreated) -> str:
    """What tells two writes of one key apart, and is the same in a redelivered notification.

    The etag alone is not enough without versioning: writing A, B, then A again is three writes.
    MinIO's sequencer (else the event time) tells writes apart; the etag is kept for readers."""
    moment = obj.sequencer or obj.event_time.isoformat()
    return "#".join((obj.version_id or "", obj.etag or "", moment))


def quarantined(obj: S3ObjectCreated) -> bool:
    prefix = camera_settings.camera().quarantine_prefix
    return obj.bucket == camera_settings.buckets().raw_bucket and obj.key.startswith(prefix)


def watch(obj: S3ObjectCreated, traceparent: str | None) -> bool:
    """Record and announce one object; returns False if this write was announced already."""
    stage = messages.stage(obj.bucket)
    if quarantined(obj):
        metrics.WATCHED.labels("quarantined").inc()
        return False  # camera-ingest recorded it as failed; it is not an image to process
    seen = records.ObjectSeen(
        device_uid=device_uid(obj),
        object_key=obj.key,
        bucket=obj.bucket,
        status=stage.status,
        size=obj.size,
        etag=obj.etag,
        checksum=obj.user_metadata.get("sha256"),
        content_type=obj.content_type,
        image_id=obj.user_metadata.get("image-id"),
    )
    object_version = version(obj)
    written = messages.Written(obj.bucket, obj.key, stage.status, obj.size, obj.etag)

    def announce(cur: Cursor, item: records.ImageObject) -> bool:
        # Claimed in this transaction: a concurrent duplicate waits on the row until the
        # confirm has come and the claim is committed (or rolled back if it did not).
        cur.execute(
            """INSERT INTO thermo.watch_publications
                   (bucket, object_key, version, image_object_id, routing_key)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
            (obj.bucket, obj.key, object_version, item.id, stage.routing_key),
        )
        if cur.fetchone() is None:
            return False
        messages.publish(
            item,
            written,
            stage.routing_key,
            obj.event_time,
            dedupe_key=f"{obj.bucket}/{obj.key}#{object_version}",
            traceparent=traceparent,
        )
        return True

    # The row is committed first: it records the object even while RabbitMQ is down.
    item = clients.postgres.transaction(lambda cur: records.record(cur, seen)[0])
    published = clients.postgres.transaction(lambda cur: announce(cur, item))
    metrics.WATCHED.labels("published" if published else "duplicate").inc()
    return published


@cloudevent_function("camera-watch", accepts=["objectflow.s3.object.created.v1"])
def camera_watch(event: Event[S3ObjectCreated]) -> None:
    published = watch(event.data, event.traceparent)
    log.info(
        "object announced" if published else "nothing new to announce (redelivery, quarantine)",
        extra={"bucket": event.data.bucket, "object_key": event.data.key},
    )
