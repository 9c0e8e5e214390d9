"""`objectflow bench --only detections`: the outbox pipeline vs a direct polling worker.

For each path, in one run: documents are inserted open-loop at `rate` per second (each with a
`created_at`) and latency is `ready_at - created_at` (both written on this machine); then
`backlog` documents are inserted at once and the drain rate is documents made ready per second.

- pipeline: runner_predictions -> mongo-outbox (polling FerretDB) -> broker -> detections-store;
- direct: a collection of its own -> bench/detections/direct.py (one process, same domain code);
- limit: MinIO PUTs/s of objects of the same size from 8 threads (the per-document floor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from bench.common import OUT, ROOT, percentiles, runtime_up, stack_env
from functions.detections.outbox import canonical_json
from functions.runtime import clients

AIM_RATIO = 0.8
AIM_P99_MS = 1000.0
PREDICTION = {"boxes": [{"label": "person", "score": 0.97, "xyxy": [4, 8, 64, 128]}] * 3}


@dataclass
class Run:
    path: str
    documents: int = 0
    offered_per_s: float = 0.0
    open_loop_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    drain_per_s: float = 0.0
    unfinished: int = 0


def documents(tag: str, bucket: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"event_id": f"bench-{tag}-{n}", "bucket": bucket, "status": "predictable",
         "prediction": {**PREDICTION, "n": n}, "bench": tag}
        for n in range(start, start + count)
    ]  # fmt: skip


def wait_ready(
    collection: Any, tag: str, last: Any, count: int, timeout: float
) -> list[dict[str, Any]]:
    """The run's ready documents once all `count` are (or at the deadline). On FerretDB a count
    over a field decodes every document of the collection, as much work as the source's scan:
    so the poll looks up the last inserted document by `_id` (pushed down, cheap) until it is
    ready and counts only then, twice a second; the figures come from the documents' own
    timestamps, not from when this poll saw them."""
    query = {"bench": tag, "status": "ready"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = collection.find_one({"_id": last}, {"status": 1})
        if done and done["status"] == "ready" and collection.count_documents(query) >= count:
            break
        time.sleep(0.5)
    return list(collection.find(query, {"created_at": 1, "ready_at": 1}))


def measure(
    path: str, collection: Any, bucket: str, rate: float, seconds: float, backlog: int
) -> Run:
    run = Run(path, offered_per_s=rate)
    tag = uuid.uuid4().hex[:8]
    count = int(rate * seconds)
    started = time.monotonic()
    last = None
    for i, document in enumerate(documents(tag, bucket, count)):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        last = collection.insert_one({**document, "created_at": datetime.now(UTC)}).inserted_id
    done = wait_ready(collection, tag, last, count, timeout=60 + seconds)
    latencies = [(d["ready_at"] - d["created_at"]).total_seconds() * 1000 for d in done]
    if done:
        end = max(d["ready_at"] for d in done)
        first = min(d["created_at"] for d in done)
        run.open_loop_per_s = len(done) / max((end - first).total_seconds(), 1e-9)
        run.p50_ms, run.p99_ms, run.max_ms = percentiles(latencies)
    run.unfinished = count - len(done)
    drain_tag = uuid.uuid4().hex[:8]
    batch = [{**d, "created_at": datetime.now(UTC)} for d in documents(drain_tag, bucket, backlog)]
    last = collection.insert_many(batch).inserted_ids[-1]
    inserted = min(d["created_at"] for d in batch)
    drained = wait_ready(collection, drain_tag, last, backlog, timeout=120)
    if drained:
        run.drain_per_s = len(drained) / max(
            (max(d["ready_at"] for d in drained) - inserted).total_seconds(), 1e-9
        )
    run.unfinished += backlog - len(drained)
    run.documents = count + backlog
    # Gone before the next path runs: a FerretDB scan costs every document in the collection.
    collection.delete_many({"bench": {"$in": [tag, drain_tag]}})
    return run


def put_rate(bucket: str, seconds: float = 3.0, threads: int = 8) -> float:
    """MinIO small PUTs per second (objects the size of one prediction)."""
    body = canonical_json({**PREDICTION, "n": 0})
    s3 = clients.s3.client()
    deadline = time.monotonic() + seconds

    def worker(i: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            s3.put_object(
                Bucket=bucket, Key=f"limit/{i}-{n}.json", Body=body, ContentType="application/json"
            )
            n += 1
        return n

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(worker, range(threads))) / seconds


def run(console: Any, *, rate: float, backlog: int, seconds: float, warmup: float) -> bool:
    """Both paths and the limit; prints and writes the report. False when a document was lost."""
    stack_env()
    runtime_up()
    db = clients.mongodb.database()
    s3 = clients.s3.client()
    bucket = f"bench-detections-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=bucket)
    direct_collection = db[f"bench_direct_{uuid.uuid4().hex[:6]}"]
    pipeline_collection = db["runner_predictions"]
    runs: list[Run] = []
    direct = subprocess.Popen(
        [sys.executable, "-m", "bench.detections.direct", direct_collection.name],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if warmup > 0:
            measure("warmup", pipeline_collection, bucket, rate, warmup, 10)
        console.print(
            f"detections: pipeline, {rate:.0f} documents/s for {seconds:.0f}s, "
            f"then {backlog} at once"
        )
        runs.append(measure("pipeline", pipeline_collection, bucket, rate, seconds, backlog))
        console.print("detections: direct polling worker, the same load")
        runs.append(measure("direct", direct_collection, bucket, rate, seconds, backlog))
        limit = put_rate(bucket)
    finally:
        direct.terminate()
        direct.wait(timeout=10)
        pipeline_collection.delete_many({"bench": {"$exists": True}})
        direct_collection.drop()
        db[f"{direct_collection.name}_claims"].drop()
        empty_bucket(s3, bucket)
    pipeline, direct_run = runs
    table = Table(title="detections outbox: pipeline vs direct worker vs MinIO small-PUT limit")
    for column in (
        "path",
        "offered/s",
        "open-loop docs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "drain docs/s",
        "unfinished",
    ):
        table.add_column(column)
    for r in runs:
        figures = (r.offered_per_s, r.open_loop_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.drain_per_s)
        table.add_row(r.path, *(f"{f:.1f}" for f in figures), str(r.unfinished))
    table.add_row("limit (MinIO PUT)", "", "", "", "", "", f"{limit:.1f}", "")
    console.print(table)
    ratio = pipeline.drain_per_s / max(direct_run.drain_per_s, 1e-9)
    report = {
        "settings": {"rate": rate, "seconds": seconds, "backlog": backlog},
        "aims": {"drain_ratio_vs_direct": AIM_RATIO, "p99_ms_at_rate": AIM_P99_MS},
        "drain_ratio_pipeline_vs_direct": round(ratio, 2),
        "met": {"ratio": ratio >= AIM_RATIO, "p99": pipeline.p99_ms <= AIM_P99_MS},
        "minio_put_per_s": round(limit, 1),
        "runs": [asdict(r) for r in runs],
    }
    (OUT / "detections.json").write_text(json.dumps(report, indent=2))
    console.print(f"pipeline/direct drain ratio {ratio:.2f} (aim >= {AIM_RATIO}); pipeline p99 "
                  f"{pipeline.p99_ms:.0f} ms at {rate:.0f}/s (aim <= {AIM_P99_MS:.0f}); "
                  f"report: {OUT / 'detections.json'}")  # fmt: skip
    return not any(r.unfinished for r in runs)


def empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)
