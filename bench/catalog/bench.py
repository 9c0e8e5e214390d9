"""`objectflow bench --only catalog`: catalog-api uploads vs direct MinIO puts; link lists.

1. Uploads: `concurrency` clients, each a keep-alive session, upload distinct noise JPEGs of
   `image_kib` KiB back to back for `seconds` (after one warm-up upload per client and
   `warmup` seconds):
   - api: POST /products/<id>/images (raw body) to a catalog-api process started here, served
     as the runtime serves it (the public path: HTTP functions take no broker hop): stream
     read, content check (magic bytes + Pillow decode), PostgreSQL transaction around the
     MinIO put, commit;
   - direct: boto3 put_object of the same bytes to the same bucket (the limit: no service).
   `repeats` rounds measure api then direct each, so a load from elsewhere on the machine meets
   both paths alike; uploads/s is the median round (and the spread), latencies pool all rounds.
2. Links: a product with 20 images; GET /products/<id>/images `link_requests` times from the
   cache, and as many times uncached (the cache key dropped before each, not timed), in each
   round. Only the request is timed; its answer is checked after.
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
import psutil
import psycopg2
import redis
import requests
import urllib3
from rich.table import Table

from bench.common import OUT, ROOT, cpu_seconds, machine_cpu_seconds, percentiles, process_tree
from devstack.api import PATHS, DevstackError, read_env_file
from functions.catalog import objects, service
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
        env={**os.environ, **env, "K_SERVICE": "catalog-api"},  # logging as the runtime's
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
    concurrency: int,
    seconds: float,
    warmup: float,
    one: Callable[[int, int], bool],
    watched: dict[str, list[int]],
) -> dict[str, Any]:
    """`concurrency` workers calling `one(worker, n)` back to back; figures after the warm-up
    (each worker's first call, untimed, then `warmup` seconds), with the CPU time of each
    `watched` group of processes per call."""
    latencies: list[float] = []
    failures, calls_made = [0], [0]
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)
    window: list[float] = []

    def worker(w: int) -> None:
        one(w, -1)  # the first call pays for connections and clients: not measured
        ready.wait()
        measure_from, stop_at = window
        n = 0
        while (now := time.monotonic()) < stop_at:
            ok = one(w, n)
            done = time.monotonic()
            n += 1
            with lock:
                calls_made[0] += 1
                if now >= measure_from:
                    latencies.append((done - now) * 1000)
                    failures[0] += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    window[:] = [began + warmup, began + warmup + seconds]
    ready.wait()
    busy = machine_cpu_seconds()
    spent = {name: cpu_seconds(pids) for name, pids in watched.items()}
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    calls = max(1, calls_made[0])  # the CPU was measured over the warm-up seconds too
    cpu_ms = {n: round((cpu_seconds(p) - spent[n]) * 1000 / calls, 1) for n, p in watched.items()}
    return {
        "requests": len(latencies),
        "failed": failures[0],
        "per_s": round(len(latencies) / seconds, 1),
        "latencies_ms": latencies,
        "machine_cpu_pct": round(100 * (machine_cpu_seconds() - busy) / elapsed, 0),
        "cpu_ms_per_call": cpu_ms,
        "load_1m": round(os.getloadavg()[0], 1),
    }


def _timed(n: int, call: Callable[[], Any], check: Callable[[Any], bool],
           before: Callable[[], object]) -> dict[str, Any]:  # fmt: skip
    """`n` calls of `call`, each after an untimed `before`; `check` judges each answer."""
    latencies, failed = [], 0
    for _ in range(n):
        before()
        started = time.perf_counter()
        answer = call()
        latencies.append((time.perf_counter() - started) * 1000)
        failed += 0 if check(answer) else 1
    return {"requests": n, "failed": failed, "latencies_ms": latencies}


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one measurement as one: rates per round (median, min, max), latencies pooled."""
    latencies = [ms for r in rounds for ms in r["latencies_ms"]]
    p50, p99, _ = percentiles(latencies) if latencies else (0.0, 0.0, 0.0)
    pooled: dict[str, Any] = {
        "requests": sum(r["requests"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "p99_per_round_ms": [round(percentiles(r["latencies_ms"])[1], 2) for r in rounds],
    }
    if "per_s" in rounds[0]:
        rates = [r["per_s"] for r in rounds]
        pooled |= {
            "per_s": statistics.median(rates),
            "per_s_rounds": rates,
            "machine_cpu_pct": [r["machine_cpu_pct"] for r in rounds],
            "cpu_ms_per_call": {
                name: statistics.median(r["cpu_ms_per_call"][name] for r in rounds)
                for name in rounds[0]["cpu_ms_per_call"]
            },
            "load_1m": [r["load_1m"] for r in rounds],
        }
    return pooled


def run(
    console: Any,
    *,
    concurrency: int,
    image_kib: int,
    link_requests: int,
    repeats: int,
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
    product, linked = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        for pid in (product, linked):
            cur.execute("INSERT INTO catalog.products (product_id) VALUES (%s)", (pid,))
    conn.close()
    images = [_jpeg(image_kib, seed) for seed in range(16)]
    console.print(
        f"catalog bench: {len(images)} distinct JPEGs of {len(images[0]) // 1024} KiB, "
        f"{concurrency} in flight, {repeats} rounds, products {product} (uploads), "
        f"{linked} (links)"
    )
    process, url = _start_api(env)
    sessions = [requests.Session() for _ in range(concurrency)]
    s3 = clients.s3.client()
    rounds: dict[str, list[dict[str, Any]]] = {
        "catalog-api": [], "direct put_object": [], "cached": [], "uncached": []
    }  # fmt: skip
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

        small = _jpeg(16, 99)
        for _ in range(20):
            sessions[0].post(
                f"{url}/products/{linked}/images",
                data=small,
                timeout=30,
                headers={"content-type": "image/jpeg"},
            ).raise_for_status()
        store = redis.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]))

        # urllib3 (requests' own transport) without requests' ~1 ms of Python per call, so
        # the figure is the service's latency more than the client's (bench/README.md)
        links_pool = urllib3.HTTPConnectionPool("127.0.0.1", int(url.rsplit(":", 1)[1]))

        def listing() -> urllib3.BaseHTTPResponse:
            return links_pool.request("GET", f"/products/{linked}/images", timeout=10)

        def listed(cached: bool) -> Callable[[urllib3.BaseHTTPResponse], bool]:
            def check(answer: urllib3.BaseHTTPResponse) -> bool:
                body = json.loads(answer.data) if answer.status == 200 else {}
                return body.get("cached") is cached and len(body.get("images", ())) == 20

            return check

        minio = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "minio"]
        watched = {"catalog-api": process_tree(process.pid), "MinIO": minio,
                   "bench client": [os.getpid()]}  # fmt: skip
        for _ in range(repeats):
            for name, one in (("catalog-api", via_api), ("direct put_object", direct)):
                rounds[name].append(_closed_loop(concurrency, seconds, warmup, one, watched))
            listing()
            rounds["cached"].append(_timed(link_requests, listing, listed(True), lambda: None))
            forget = lambda: store.delete(f"catalog:links:{linked}")  # noqa: E731
            rounds["uncached"].append(_timed(link_requests, listing, listed(False), forget))
    finally:
        process.terminate()
        process.wait(timeout=10)
        _cleanup(bucket, product, linked)
    figures = {name: _pooled(measured) for name, measured in rounds.items()}
    uploads = {name: figures[name] for name in ("catalog-api", "direct put_object")}
    links = {name: figures[name] for name in ("cached", "uncached")}
    ratio = uploads["catalog-api"]["per_s"] / max(uploads["direct put_object"]["per_s"], 1e-9)
    report = {
        "concurrency": concurrency,
        "image_bytes": len(images[0]),
        "repeats": repeats,
        "uploads": uploads,
        "ratio": round(ratio, 2),
        "links": links,
        "rounds": rounds,
    }
    (OUT / "catalog.json").write_text(json.dumps(report, indent=2))
    console.print(_table(report))
    lost = sum(r["failed"] for r in figures.values())
    return lost == 0


def _cleanup(bucket: str, *products: str) -> None:
    """Remove what the bench stored: the direct path's objects, and the products (their rows
    and objects) the way product.deleted does."""
    for pid in products:
        service.product_deleted(uuid.UUID(pid))
        listing = {"Contents": True}
        while listing.get("Contents"):
            listing = clients.s3.call(
                lambda s3, pid=pid: s3.list_objects_v2(Bucket=bucket, Prefix=f"bench/{pid}/")
            )
            if listing.get("Contents"):
                keys = [o["Key"] for o in listing["Contents"]]
                objects.delete_many(keys)


def _spread(rates: list[float]) -> str:
    return f" ({min(rates)}-{max(rates)})" if len(rates) > 1 else ""


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"catalog: {report['image_bytes'] // 1024} KiB JPEG uploads, "
        f"{report['concurrency']} in flight; links of 20 images; median of "
        f"{report['repeats']} rounds (spread), latencies of all rounds"
    )
    for column in ("measure", "this project", "source design / limit", "aim", "met"):
        table.add_column(column)
    api, direct = report["uploads"]["catalog-api"], report["uploads"]["direct put_object"]
    table.add_row(
        "uploads/s",
        f"{api['per_s']}{_spread(api['per_s_rounds'])} catalog-api",
        f"{direct['per_s']}{_spread(direct['per_s_rounds'])} direct put_object",
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
        "links p99 per round ms",
        " / ".join(map(str, cached["p99_per_round_ms"])),
        " / ".join(map(str, uncached["p99_per_round_ms"])),
        "",
        "",
    )
    table.add_row(
        "CPU ms per upload (median round)",
        ", ".join(f"{n} {ms}" for n, ms in api["cpu_ms_per_call"].items()),
        ", ".join(f"{n} {ms}" for n, ms in direct["cpu_ms_per_call"].items()),
        "",
        "",
    )
    for label, key in (("machine CPU %", "machine_cpu_pct"), ("load average (1 min)", "load_1m")):
        table.add_row(
            f"{label} per round",
            " / ".join(map(str, api[key])),
            " / ".join(map(str, direct[key])),
            "",
            "",
        )
    return table
