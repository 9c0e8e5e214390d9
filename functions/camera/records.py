"""Devices and their image objects in PostgreSQL (`thermo.devices`, `thermo.image_objects`).

One `image_objects` row per captured image, unique by object key: the raw object (thermo-raw)
and the processed one (thermo-processed) share the key. Writers race freely (camera-ingest
records the upload, camera-watch the notification of the same object, camera-reconcile the
stuck ones), so every write is an upsert or a guarded transition, and a status only moves
forward: pending -> processing -> completed. `failed` (set by reconciliation) is left again
only when a notification shows the object exists after all. camera-ingest records a capture that
does not decode as `failed` from the start, with the reason, under the quarantine prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

PROGRESS = ("pending", "processing", "completed")
STATUSES = (*PROGRESS, "failed")


def next_status(current: str, incoming: str) -> str:
    """The status after an object notification says `incoming`; never moves backwards."""
    if current == "failed" or incoming == "failed":
        return incoming
    return max(current, incoming, key=PROGRESS.index)


@dataclass(frozen=True)
class ObjectSeen:
    """An object of an image, as an upload or a bucket notification describes it."""

    device_uid: str
    object_key: str
    bucket: str
    status: str
    size: int | None = None
    etag: str | None = None
    checksum: str | None = None
    content_type: str | None = None
    image_id: str | None = None
    failure_reason: str | None = None  # with status `failed`: why (a quarantined capture)


@dataclass(frozen=True)
class ImageObject:
    id: int
    device_id: int
    device_uid: str
    image_id: str | None
    object_key: str
    bucket: str
    status: str
    checksum: str | None
    size: int | None
    etag: str | None
    content_type: str | None
    failure_reason: str | None
    republish_count: int
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            f.name: (v.isoformat() if isinstance(v := getattr(self, f.name), datetime) else v)
            for f in fields(self)
        }


_COLUMNS = ", ".join(
    "d.device_uid" if f.name == "device_uid" else f"o.{f.name}" for f in fields(ImageObject)
)
_SELECT = (
    f"SELECT {_COLUMNS} FROM thermo.image_objects o JOIN thermo.devices d ON d.id = o.device_id"
)


def device_id(cur: Cursor, device_uid: str) -> int:
    """Get or create the device row; safe under concurrent first sightings."""
    cur.execute(
        """INSERT INTO thermo.devices (device_uid) VALUES (%s)
           ON CONFLICT (device_uid) DO UPDATE SET device_uid = EXCLUDED.device_uid
           RETURNING id""",
        (device_uid,),
    )
    (found,) = _one(cur)
    return int(found)


def record(cur: Cursor, seen: ObjectSeen) -> tuple[ImageObject, bool]:
    """Upsert the image row for `seen`; returns the row and whether it changed."""
    owner = device_id(cur, seen.device_uid)
    cur.execute(
        """INSERT INTO thermo.image_objects
               (device_id, image_id, object_key, bucket, status, checksum, size, etag, content_type,
                failure_reason)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (object_key) DO NOTHING RETURNING id""",
        (
            owner, seen.image_id, seen.object_key, seen.bucket, seen.status,
            seen.checksum, seen.size, seen.etag, seen.content_type, seen.failure_reason,
        ),
    )  # fmt: skip
    if cur.fetchone() is not None:
        return by_key(cur, seen.object_key, lock=False), True
    current = by_key(cur, seen.object_key, lock=True)
    status = next_status(current.status, seen.status)
    moved = status != current.status
    # The row describes the object of its current stage: a late notification of an earlier
    # stage only fills in what is still unknown.
    same_stage = status == seen.status
    update = {
        "status": status,
        "bucket": seen.bucket if same_stage else current.bucket,
        "size": seen.size if same_stage and seen.size is not None else current.size,
        "etag": seen.etag if same_stage and seen.etag is not None else current.etag,
        "content_type": current.content_type or seen.content_type,
        "checksum": current.checksum or seen.checksum,
        "image_id": current.image_id or seen.image_id,
    }
    changed = any(getattr(current, k) != v for k, v in update.items())
    if not changed:
        return current, False
    cur.execute(
        """UPDATE thermo.image_objects SET status = %(status)s, bucket = %(bucket)s,
               size = %(size)s, etag = %(etag)s, content_type = %(content_type)s,
               checksum = %(checksum)s, image_id = %(image_id)s, updated_at = now(),
               republish_count = CASE WHEN %(moved)s THEN 0 ELSE republish_count END,
               failure_reason = CASE WHEN %(reason)s IS NOT NULL THEN %(reason)s
                                     WHEN %(moved)s THEN NULL ELSE failure_reason END
           WHERE id = %(id)s""",
        {**update, "moved": moved, "id": current.id, "reason": seen.failure_reason},
    )
    return by_key(cur, seen.object_key, lock=False), True


def by_key(cur: Cursor, object_key: str, *, lock: bool) -> ImageObject:
    cur.execute(
        f"{_SELECT} WHERE o.object_key = %s{' FOR UPDATE OF o' if lock else ''}", (object_key,)
    )
    return ImageObject(*_one(cur))


def _one(cur: Cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row


def by_image_id(cur: Cursor, image_id: str) -> ImageObject | None:
    cur.execute(f"{_SELECT} WHERE o.image_id = %s ORDER BY o.id LIMIT 1", (image_id,))
    row = cur.fetchone()
    return ImageObject(*row) if row else None


def stuck(cur: Cursor, pending_ms: int, processing_ms: int, limit: int) -> list[ImageObject]:
    """Items that sat in `pending` or `processing` longer than their threshold, oldest first."""
    cur.execute(
        f"""{_SELECT}
            WHERE (o.status = 'pending' AND o.updated_at < now() - %s * interval '1 millisecond')
               OR (o.status = 'processing'
                   AND o.updated_at < now() - %s * interval '1 millisecond')
            ORDER BY o.updated_at LIMIT %s""",
        (pending_ms, processing_ms, limit),
    )
    return [ImageObject(*row) for row in cur.fetchall()]


def mark_republished(cur: Cursor, item: ImageObject) -> bool:
    """Count a re-publish; False if the item moved on since it was read."""
    cur.execute(
        """UPDATE thermo.image_objects
           SET republish_count = republish_count + 1, updated_at = now()
           WHERE id = %s AND status = %s AND updated_at = %s""",
        (item.id, item.status, item.updated_at),
    )
    return bool(cur.rowcount)


def mark_failed(cur: Cursor, item: ImageObject, reason: str) -> bool:
    """Fail a stuck item; False if it moved on since it was read."""
    cur.execute(
        """UPDATE thermo.image_objects
           SET status = 'failed', failure_reason = %s, updated_at = now()
           WHERE id = %s AND status = %s AND updated_at = %s""",
        (reason, item.id, item.status, item.updated_at),
    )
    return bool(cur.rowcount)
