"""Helpers of the catalog tests: real images (and fake ones), the state one product has in
PostgreSQL, MinIO and Redis, and the bad files every tier rejects."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import uuid
from typing import Any

import psycopg2
import redis
from PIL import Image

from tests.support import s3_client

BUCKET = "product-images"


def jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_of_size(size: int, seed: int = 0) -> bytes:
    """A noise JPEG of about `size` bytes (within a few percent)."""
    side = max(8, int((size / 1.4) ** 0.5))
    return jpeg(side, side, seed)


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "GIF")
    return buffer.getvalue()


def broken_crc_png() -> bytes:
    data = bytearray(png(32, 32, seed=7))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # the first byte of the IDAT chunk's CRC
    return bytes(data)


BAD_FILES: dict[str, tuple[bytes, int, str]] = {
    # name -> (content, status, error kind)
    "empty": (b"", 422, "empty-file"),
    "gif": (gif(), 415, "unsupported-image"),
    "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", 415, "unsupported-image"),
    "text": (b"just some text, renamed to photo.jpg\n", 415, "unsupported-image"),
    "truncated-jpeg": (jpeg(320, 240, seed=3)[:-2000], 422, "corrupt-image"),
    "broken-crc-png": (broken_crc_png(), 422, "corrupt-image"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sql(env: dict[str, str], statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return [tuple(r) for r in rows]


def objects(env: dict[str, str], product_id: str) -> list[str]:
    listing = s3_client(env).list_objects_v2(Bucket=BUCKET, Prefix=f"products/{product_id}/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def redis_client(env: dict[str, str]) -> redis.Redis:
    return redis.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]))


def state(env: dict[str, str], product_id: str) -> dict[str, Any]:
    """Everything the service keeps about one product, to compare before and after."""
    store = redis_client(env)
    prefix = f"products/{product_id}/"
    return {
        "product": sql(
            env,
            "SELECT product_id::text, deleted_at FROM catalog.products WHERE product_id = %s",
            product_id,
        ),
        "images": sql(
            env,
            "SELECT image_id::text, object_key FROM catalog.images "
            "WHERE product_id = %s ORDER BY 1",
            product_id,
        ),
        "objects": objects(env, product_id),
        "links": store.get(f"catalog:links:{product_id}"),
        "failed": sorted(
            k.decode() for k in store.smembers("failed_deletes") if k.decode().startswith(prefix)
        ),
    }


def new_product(env: dict[str, str]) -> str:
    """A product recorded directly in PostgreSQL (what product.created does)."""
    product_id = str(uuid.uuid4())
    sql(env, "INSERT INTO catalog.products (product_id) VALUES (%s)", product_id)
    return product_id


def ensure_bucket(env: dict[str, str]) -> None:
    s3 = s3_client(env)
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
