"""The catalog step of `objectflow demo`: a product's images through the running runtime.

Plays Product Service on Kafka (`product.created`), uploads a real PNG (multipart) and JPEG (raw
body) through catalog-api, lists their links twice (the second from the cache), downloads one
through its presigned URL and checks its sha256, deletes an image (202; catalog-image-delete
removes the object), then sends `product.deleted` and sees every row and object go.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from typing import Any

import numpy as np
import psycopg2
import requests
from kafka import KafkaProducer
from matplotlib import pyplot
from rich.console import Console
from rich.table import Table

from devstack import wiring
from devstack.demo import wait
from functions.runtime import clients, settings

ORDER = 30  # after camera


def pictures() -> tuple[bytes, bytes]:
    """A PNG and a JPEG worth looking at: a product shot's colour gradient."""
    y, x = np.mgrid[0:1:120j, 0:1:160j]
    png, jpg = io.BytesIO(), io.BytesIO()
    pyplot.imsave(png, np.sin(6 * x) * np.cos(4 * y), cmap="viridis", format="png")
    pyplot.imsave(jpg, x * y, cmap="magma", format="jpeg")
    return png.getvalue(), jpg.getvalue()


def run(env: dict[str, str], console: Console) -> bool:
    """One product's life; True when every step behaved as expected."""
    values = wiring.default()
    api = f"http://127.0.0.1:{values.function_ports()['catalog-api']}"
    try:
        requests.get(f"{api}/health", timeout=2).raise_for_status()
    except requests.RequestException:
        console.print("[red]catalog-api is not running: start the runtime with `make up`[/]")
        return False
    for name, value in env.items():
        os.environ.setdefault(name, value)
    settings.reset()
    clients.reset()
    bucket = env.get("MINIO_PRODUCT_BUCKET", "product-images")
    product = str(uuid.uuid4())
    producer = KafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    started = time.monotonic()
    table = Table(title=f"catalog: the images of product {product}")
    for column in ("step", "after", "what"):
        table.add_column(column)
    ok = True

    def step(label: str, passed: bool, what: str) -> None:
        nonlocal ok
        ok &= passed
        mark = what if passed else f"[red]{what}[/]"
        table.add_row(label, f"{time.monotonic() - started:.2f}s", mark)

    def row(statement: str) -> Any:
        with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.execute(statement, (product,))
            found = cur.fetchall()
        conn.close()
        return found

    producer.send(
        "product.created", key=product.encode(), value=json.dumps({"productId": product}).encode()
    ).get(30)
    recorded = wait(lambda: row("SELECT created_at FROM catalog.products WHERE product_id = %s"))
    step(
        "Kafka product.created", bool(recorded), "catalog.products row" if recorded else "not seen"
    )

    png, jpg = pictures()
    first = requests.post(
        f"{api}/products/{product}/images",
        timeout=30,
        files={"file": ("shot.png", png, "image/png")},
    )
    second = requests.post(
        f"{api}/products/{product}/images",
        data=jpg,
        timeout=30,
        headers={"content-type": "image/jpeg"},
    )
    for label, answer in (("upload PNG (multipart)", first), ("upload JPEG (raw body)", second)):
        body = answer.json()
        size = f"{body.get('width')}x{body.get('height')}"
        step(
            label, answer.status_code == 201, f"{answer.status_code} {body.get('key', body)} {size}"
        )

    listed = requests.get(f"{api}/products/{product}/images", timeout=10).json()
    again = requests.get(f"{api}/products/{product}/images", timeout=10).json()
    step(
        "links",
        len(listed.get("images", [])) == 2 and again.get("cached") is True,
        f"{len(listed.get('images', []))} presigned URLs; cached: {listed.get('cached')} then "
        f"{again.get('cached')}",
    )
    url = again["images"][0]["url"] if again.get("images") else ""
    downloaded = requests.get(url, timeout=10).content if url else b""
    same = hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(png).hexdigest()
    step(
        "download via presigned URL",
        same,
        f"{len(downloaded)} bytes, sha256 {'matches' if same else 'DIFFERS'}: {url[:60]}...",
    )

    if first.status_code == 201:
        key = first.json()["key"]
        gone = requests.delete(f"{api}/images/{first.json()['image_id']}", timeout=10)
        deleted = wait(lambda: _missing(bucket, key))
        fate = "deleted by catalog-image-delete" if deleted else "still there"
        step(
            "DELETE image", gone.status_code == 202 and bool(deleted), f"{gone.status_code}; {fate}"
        )

    producer.send(
        "product.deleted", key=product.encode(), value=json.dumps({"productId": product}).encode()
    ).get(30)
    producer.close()
    cleared = wait(
        lambda: (
            not row("SELECT 1 FROM catalog.images WHERE product_id = %s")
            and _listing(bucket, product) == []
            and row("SELECT deleted_at FROM catalog.products WHERE product_id = %s")[0][0]
        )
    )
    step(
        "Kafka product.deleted",
        bool(cleared),
        "rows and objects gone, product tombstoned" if cleared else "images remain",
    )
    console.print(table)
    return ok


def _listing(bucket: str, product: str) -> list[str]:
    found = clients.s3.client().list_objects_v2(Bucket=bucket, Prefix=f"products/{product}/")
    return [item["Key"] for item in found.get("Contents", [])]


def _missing(bucket: str, key: str) -> bool:
    return key not in _listing(bucket, key.split("/")[1])
