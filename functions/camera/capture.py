"""Chunked captures, from one chunk to a finished image (source document 001's ingestion).

`receive` keeps a chunk in Redis; once every chunk of a capture is there, `finish` assembles
the image under the capture's lock, uploads it to the raw bucket, records it in PostgreSQL and
only then marks it processed. If the upload or the record fails, nothing is marked, so the
capture completes on a redelivery of the chunk, or later from camera-sweep.

A JPEG or PNG that does not decode (a capture mixed from two, or a broken camera) is uploaded
under the quarantine prefix instead and recorded as `failed` with the reason; camera-watch
announces nothing under that prefix.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import filetype
from PIL import Image, UnidentifiedImageError
from redis.exceptions import LockError

from functions.camera import metrics, records
from functions.camera import settings as camera_settings
from functions.camera.chunks import ChunkStore, Stored
from functions.camera.events import CameraChunk
from functions.runtime import clients, idempotency, settings
from functions.runtime.errors import InvalidData, PayloadTooLarge

log = logging.getLogger("objectflow.camera")

IMAGE_TYPES = {"image/jpeg": ("jpg", "image/jpeg"), "image/png": ("png", "image/png")}


def chunk_store() -> ChunkStore:
    cfg = camera_settings.camera()
    return ChunkStore(
        clients.redis.client(),
        capture_ttl=cfg.capture_ttl_s,
        complete_ttl=cfg.complete_ttl_s,
        session_idle=cfg.session_idle_seconds,
        handled_ttl=settings.runtime().idempotency_ttl,
    )


def handled_key(source: str, event_id: str) -> str:
    """The key under which the adapter remembers a chunk event of camera-ingest as handled."""
    return idempotency.key("camera-ingest", source, event_id)


def check_limits(chunk: CameraChunk) -> None:
    cfg = camera_settings.camera()
    if chunk.total > cfg.max_chunks:
        raise InvalidData(
            f"total {chunk.total} exceeds the maximum of {cfg.max_chunks} chunks "
            "(CAMERA_MAX_CHUNKS)",
            field="total",
        )
    if len(chunk.data) > cfg.max_chunk_bytes:
        raise PayloadTooLarge(
            f"chunk of {len(chunk.data)} bytes exceeds {cfg.max_chunk_bytes} "
            "(CAMERA_MAX_CHUNK_BYTES)",
            field="data",
        )


def receive(store: ChunkStore, chunk: CameraChunk, handled: str = "") -> Stored:
    """Keep one chunk; a chunk that contradicts its capture is rejected and changes nothing.

    `handled` is the adapter's idempotency key of the chunk's event (see `handled_key`)."""
    check_limits(chunk)
    stored = clients.call(
        "redis",
        lambda: store.store(
            chunk.id, chunk.index, chunk.total, chunk.data, chunk.image_id, handled
        ),
    )
    if stored.outcome == "total-changed":
        raise InvalidData(
            f"total {chunk.total} differs from {stored.total}, the total of capture "
            f"{stored.image_id} so far",
            field="total",
        )
    if stored.outcome == "conflict":
        raise InvalidData(
            f"chunk {chunk.index} of capture {stored.image_id} was already received with "
            "different content (an image_id is used once)",
            field="data",
        )
    if stored.outcome == "other-camera":
        raise InvalidData(
            f"image_id {stored.image_id} belongs to another camera than {chunk.id}",
            field="image_id",
        )
    metrics.CHUNKS.labels("late" if stored.outcome == "processed" else stored.outcome).inc()
    return stored


def object_key(camera_uid: str, image_id: str, image: bytes) -> tuple[str, str]:
    """(key, content type): `<camera_uid>/<image_id>.<ext>`, the type judged by magic bytes."""
    kind = filetype.guess(image)
    ext, content_type = IMAGE_TYPES.get(
        kind.mime if kind else "", ("bin", "application/octet-stream")
    )
    return f"{camera_uid}/{image_id}.{ext}", content_type


def undecodable(image: bytes, content_type: str) -> str | None:
    """Why a JPEG or PNG does not decode, or None when it does (other types are not judged).

    `verify` checks the structure (for PNG, every chunk's CRC); `load` decodes every pixel.
    Pillow's decompression-bomb guard is an error here, not a warning."""
    if content_type not in ("image/jpeg", "image/png"):
        return None
    kind = content_type.removeprefix("image/").upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image)) as opened:
                opened.verify()
            with Image.open(io.BytesIO(image)) as opened:
                opened.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # fmt: skip
        return f"does not decode as {kind}: {exc}"
    return None


@dataclass(frozen=True)
class Finished:
    outcome: Literal["finished", "already", "busy", "incomplete"]
    object_key: str | None = None


def finish(store: ChunkStore, image_id: str, *, by: str) -> Finished:
    """Assemble, upload, record and mark one complete capture, under its lock."""
    cfg = camera_settings.camera()
    lock = store.lock(image_id, cfg.lock_ttl_s)
    if not clients.call("redis", lock.acquire):
        return Finished("busy")  # another worker is finishing it; camera-sweep backs it up
    try:
        capture = clients.call("redis", lambda: store.capture(image_id))
        if capture is not None and capture.processed_key is not None:
            return Finished("already", capture.processed_key)
        if capture is None or capture.camera_uid is None or not capture.complete:
            return Finished("incomplete")
        camera_uid = capture.camera_uid
        parts = clients.call("redis", lambda: store.chunks(image_id))
        if len(parts) != capture.total:
            return Finished("incomplete")
        image = b"".join(parts[i] for i in range(len(parts)))
        key = _publish_image(camera_uid, image_id, image, cfg.quarantine_prefix)
        clients.call("redis", lambda: store.mark_processed(image_id, key, cfg.processed_ttl_s))
    finally:
        try:
            lock.release()
        except LockError:  # expired mid-way; every step above is idempotent
            log.warning("assembly lock expired before release", extra={"image_id": image_id})
    metrics.CAPTURES.labels(by).inc()
    log.info(
        "capture finished",
        extra={"image_id": image_id, "camera_uid": camera_uid, "object_key": key},
    )
    return Finished("finished", key)


def _publish_image(camera_uid: str, image_id: str, image: bytes, quarantine: str) -> str:
    """Upload the image and record it; both are idempotent, so a retry repeats them safely.

    An image that does not decode goes under the `quarantine` prefix with a `failed` row."""
    key, content_type = object_key(camera_uid, image_id, image)
    reason = undecodable(image, content_type)
    if reason is not None:
        key = quarantine + key
        metrics.QUARANTINED.inc()
        log.warning(
            "capture quarantined", extra={"image_id": image_id, "object_key": key, "error": reason}
        )
    checksum = hashlib.sha256(image).hexdigest()
    bucket = camera_settings.buckets().raw_bucket
    answer = clients.s3.call(
        lambda s3: s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=image,
            ContentType=content_type,
            Metadata={"device-uid": camera_uid, "image-id": image_id, "sha256": checksum},
        )
    )
    seen = records.ObjectSeen(
        device_uid=camera_uid,
        object_key=key,
        bucket=bucket,
        status="pending" if reason is None else "failed",
        size=len(image),
        etag=answer["ETag"].strip('"'),
        checksum=checksum,
        content_type=content_type,
        image_id=image_id,
        failure_reason=reason,
    )
    clients.postgres.transaction(lambda cur: records.record(cur, seen))
    return key
