"""`objectflow bench --only catalog`: catalog-api uploads vs direct MinIO puts; link lists.

1. Uploads: `concurrency` clients, each a keep-alive session, upload distinct noise JPEGs of
   `image_kib` KiB back to back for `seconds` (after `warmup`):
   - api: POST /products/<id>/images (raw body) to a catalog-api process started here: stream
     read, content check (magic bytes + Pillow decode), PostgreSQL transaction around the MinIO
     put, commit;
   - direct: boto3 put_object of the same bytes to the same bucket (the limit: no service).
2. Links: a product with 20 images; GET /products/<id>/images `link_requests` times from the
   cache, and as many times uncached (the cache key dropped before each, not timed).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg2
import redis
import requests
from rich.table import Table

from bench.common import OUT, ROOT, machine_cpu_seconds
from devstack.api import PATHS, DevstackError, read_env_file
from functions.runtime import clients, settings

AIM_RATIO = 0.7
AIM_CACHED_P99_MS = 5.0
BUCKET_ENV = "MINIO_PRODUCT_BUCKET"


def _jpeg(kib: int, seed: int) -> bytes:
    """A noise JPEG of about `kib` KiB (noise compresses badly, so size follows pixels)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    side = int((kib * 1024 / 0.9) ** 0.5)  # ~0.9 bytes per pixel at quality 90
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(ROOT / "functions" / "catalog" / "api.py"),
        "--target",
        "catalog_api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--asgi",
    ]
    log = open(OUT / "catalog-api.log", "wb")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env, "K_SERVICE": "catalog-api", "OBJECTFLOW_LOG_LEVEL": "WARNING"},
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return process, url
        except requests.RequestException:
            time.sleep(0.1)
    process.terminate()
    raise DevstackError(f"bench: catalog-api did not start (see {OUT / 'catalog-api.log'})")


def _closed_loop(
    concurrency: int, seconds: float, warmup: float, one: Callable[[int, int], bool]
) -> dict[str, Any]:
    """`concurrency` workers calling `one(worker, n)` back to back; figures after the warm-up."""
    began = time.monotonic()
    measure_from, stop_at = began + warmup, began + warmup + seconds
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        n = 0
        while (now := time.monotonic()) < stop_at:
            ok = one(w, n)
            done = time.monotonic()
            n += 1
            if now >= measure_from:
                with lock:
                    latencies.append((done - now) * 1000)
                    failures[0] += 0 if ok else 1

    busy = machine_cpu_seconds()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    return {
        "requests": len(latencies),
        "failed": failures[0],
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else 0.0,
        "machine_cpu_pct": round(100 * (machine_cpu_seconds() - busy) / elapsed, 0),
    }


def _timed(n: int, call: Callable[[], bool], before: Callable[[], object]) -> dict[str, Any]:
    latencies, failed = [], 0
    for _ in range(n):
        before()
        started = time.perf_counter()
        failed += 0 if call() else 1
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "requests": n,
        "failed": failed,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


def run(
    console: Any,
    *,
    concurrency: int,
    image_kib: int,
    link_requests: int,
    seconds: float,
    warmup: float,
) -> bool:
    OUT.mkdir(parents=True, exist_ok=True)
    env = read_env_file(PATHS)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    settings.reset()
    clients.reset()
    bucket = os.environ.get(BUCKET_ENV, "product-images")
    product = str(uuid.uuid4())
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO catalog.products (product_id) VALUES (%s)", (product,))
    conn.close()
    images = [_jpeg(image_kib, seed) for seed in range(16)]
    console.print(
        f"catalog bench: {len(images)} distinct JPEGs of {len(images[0]) // 1024} KiB, "
        f"{concurrency} in flight, product {product}"
    )
    process, url = _start_api(env)
    sessions = [requests.Session() for _ in range(concurrency)]
    s3 = clients.s3.client()
    try:

        def via_api(w: int, n: int) -> bool:
            answer = sessions[w].post(
                f"{url}/products/{product}/images",
                timeout=60,
                data=images[(w + n) % len(images)],
                headers={"content-type": "image/jpeg"},
            )
            return answer.status_code == 201

        def direct(w: int, n: int) -> bool:
            s3.put_object(
                Bucket=bucket,
                Key=f"bench/{product}/{w}-{n}.jpg",
                Body=images[(w + n) % len(images)],
                ContentType="image/jpeg",
            )
            return True

        uploads = {
            "catalog-api": _closed_loop(concurrency, seconds, warmup, via_api),
            "direct put_object": _closed_loop(concurrency, seconds, warmup, direct),
        }
        linked = str(uuid.uuid4())
        with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO catalog.products (product_id) VALUES (%s)", (linked,))
        conn.close()
        small = _jpeg(16, 99)
        for _ in range(20):
            sessions[0].post(
                f"{url}/products/{linked}/images",
                data=small,
                timeout=30,
                headers={"content-type": "image/jpeg"},
            ).raise_for_status()
        store = redis.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]))

        def listing() -> bool:
            answer = sessions[0].get(f"{url}/products/{linked}/images", timeout=10)
            return answer.ok and len(answer.json()["images"]) == 20

        listing()
        links = {
            "cached": _timed(link_requests, listing, lambda: None),
            "uncached": _timed(
                link_requests, listing, lambda: store.delete(f"catalog:links:{linked}")
            ),
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
        _cleanup(env, bucket, product)
    ratio = uploads["catalog-api"]["per_s"] / max(uploads["direct put_object"]["per_s"], 1e-9)
    report = {
        "concurrency": concurrency,
        "image_bytes": len(images[0]),
        "uploads": uploads,
        "ratio": round(ratio, 2),
        "links": links,
    }
    (OUT / "catalog.json").write_text(json.dumps(report, indent=2))
    console.print(_table(report))
    lost = sum(r["failed"] for r in [*uploads.values(), *links.values()])
    return lost == 0


def _cleanup(env: dict[str, str], bucket: str, product: str) -> None:
    """Remove the direct path's objects (the API's stay with their rows, like any product's)."""
    s3 = clients.s3.client()
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"bench/{product}/")
    while listing.get("Contents"):
        s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listing["Contents"]]}
        )
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"bench/{product}/")


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"catalog: {report['image_bytes'] // 1024} KiB JPEG uploads, "
        f"{report['concurrency']} in flight; links of 20 images"
    )
    for column in ("measure", "this project", "source design / limit", "aim", "met"):
        table.add_column(column)
    api, direct = report["uploads"]["catalog-api"], report["uploads"]["direct put_object"]
    table.add_row(
        "uploads/s",
        f"{api['per_s']} (catalog-api)",
        f"{direct['per_s']} (direct put_object)",
        f">= {AIM_RATIO}x direct",
        "yes" if report["ratio"] >= AIM_RATIO else f"no ({report['ratio']}x)",
    )
    table.add_row(
        "upload p50 / p99 ms",
        f"{api['p50_ms']} / {api['p99_ms']}",
        f"{direct['p50_ms']} / {direct['p99_ms']}",
        "",
        "",
    )
    cached, uncached = report["links"]["cached"], report["links"]["uncached"]
    table.add_row(
        "links p50 / p99 ms",
        f"{cached['p50_ms']} / {cached['p99_ms']} (cached)",
        f"{uncached['p50_ms']} / {uncached['p99_ms']} (uncached)",
        f"cached p99 <= {AIM_CACHED_P99_MS}",
        "yes" if cached["p99_ms"] <= AIM_CACHED_P99_MS else "no",
    )
    table.add_row(
        "machine CPU % (api / direct)",
        f"{api['machine_cpu_pct']}",
        f"{direct['machine_cpu_pct']}",
        "",
        "",
    )
    return table
