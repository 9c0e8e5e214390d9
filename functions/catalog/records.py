"""The catalog schema in PostgreSQL: products (with tombstones), images, link versions.

Plain SQL over a cursor; the caller owns the transaction (clients.postgres.transaction).
Lock order, which keeps uploads parallel and product deletion free of orphans:
- an upload holds FOR KEY SHARE on its product row from its check until its commit (uploads
  never block each other), and bumps the product's link version last;
- a product deletion takes FOR UPDATE on the product row, so it waits for the uploads in flight
  and every later upload finds the tombstone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

COLUMNS = "image_id, product_id, bucket, object_key, content_type, size, sha256, width, height, created_at"  # noqa: E501


@dataclass(frozen=True)
class ImageRow:
    image_id: uuid.UUID
    product_id: uuid.UUID
    bucket: str
    key: str
    content_type: str
    size: int
    sha256: str
    width: int
    height: int
    created_at: datetime

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> ImageRow:
        image_id, product_id, *rest = row
        return cls(uuid.UUID(str(image_id)), uuid.UUID(str(product_id)), *rest)


def record_product(cur: Cursor, product_id: uuid.UUID) -> bool:
    """product.created: True when the product is new (a tombstone is left alone)."""
    cur.execute(
        "INSERT INTO catalog.products (product_id) VALUES (%s) ON CONFLICT DO NOTHING",
        (str(product_id),),
    )
    return bool(cur.rowcount)


def live_product(cur: Cursor, product_id: uuid.UUID, *, lock: bool = False) -> bool:
    """Whether the product exists and is not deleted; `lock`: hold it against deletion."""
    cur.execute(
        "SELECT 1 FROM catalog.products WHERE product_id = %s AND deleted_at IS NULL"
        + (" FOR KEY SHARE" if lock else ""),
        (str(product_id),),
    )
    return cur.fetchone() is not None


def link_version(cur: Cursor, product_id: uuid.UUID) -> int | None:
    """The product's link version, or None if it is unknown or deleted."""
    cur.execute(
        """SELECT coalesce(v.version, 0) FROM catalog.products p
           LEFT JOIN catalog.link_versions v USING (product_id)
           WHERE p.product_id = %s AND p.deleted_at IS NULL""",
        (str(product_id),),
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def bump_links(cur: Cursor, product_id: uuid.UUID) -> None:
    cur.execute(
        """INSERT INTO catalog.link_versions (product_id, version) VALUES (%s, 1)
           ON CONFLICT (product_id) DO UPDATE SET version = catalog.link_versions.version + 1""",
        (str(product_id),),
    )


def insert_image(cur: Cursor, image: ImageRow) -> None:
    cur.execute(
        f"INSERT INTO catalog.images ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            str(image.image_id),
            str(image.product_id),
            image.bucket,
            image.key,
            image.content_type,
            image.size,
            image.sha256,
            image.width,
            image.height,
            image.created_at,
        ),
    )


def image(cur: Cursor, image_id: uuid.UUID) -> ImageRow | None:
    cur.execute(f"SELECT {COLUMNS} FROM catalog.images WHERE image_id = %s", (str(image_id),))
    row = cur.fetchone()
    return ImageRow.of(row) if row else None


def images_of(cur: Cursor, product_id: uuid.UUID) -> list[ImageRow]:
    cur.execute(
        f"SELECT {COLUMNS} FROM catalog.images WHERE product_id = %s ORDER BY created_at, image_id",
        (str(product_id),),
    )
    return [ImageRow.of(row) for row in cur.fetchall()]


def delete_image(cur: Cursor, image_id: uuid.UUID) -> ImageRow | None:
    cur.execute(
        f"DELETE FROM catalog.images WHERE image_id = %s RETURNING {COLUMNS}", (str(image_id),)
    )
    row = cur.fetchone()
    if row is None:
        return None
    deleted = ImageRow.of(row)
    bump_links(cur, deleted.product_id)
    return deleted


def tombstone(cur: Cursor, product_id: uuid.UUID) -> list[ImageRow]:
    """product.deleted: mark the product deleted (recording it if unknown), after the uploads in
    flight have finished, and remove its image rows; returns them."""
    pid = str(product_id)
    cur.execute(
        """INSERT INTO catalog.products (product_id, deleted_at) VALUES (%s, now())
           ON CONFLICT (product_id) DO NOTHING""",
        (pid,),
    )
    cur.execute("SELECT 1 FROM catalog.products WHERE product_id = %s FOR UPDATE", (pid,))
    cur.execute(
        "UPDATE catalog.products SET deleted_at = now() WHERE product_id = %s "
        "AND deleted_at IS NULL",
        (pid,),
    )
    cur.execute(f"DELETE FROM catalog.images WHERE product_id = %s RETURNING {COLUMNS}", (pid,))
    removed = [ImageRow.of(row) for row in cur.fetchall()]
    cur.execute("DELETE FROM catalog.link_versions WHERE product_id = %s", (pid,))
    return removed


def keys_with_rows(cur: Cursor, keys: list[str]) -> set[str]:
    cur.execute("SELECT object_key FROM catalog.images WHERE object_key = ANY(%s)", (keys,))
    return {row[0] for row in cur.fetchall()}
