"""`objectflow bench --only camera`: camera ingestion, this pipeline vs a direct consumer.

Simulated cameras publish open-loop (on a fixed schedule, never waiting for the pipeline): each
of `cameras` sends a capture of `chunks` chunks every `period` seconds, spread evenly, through
Mosquitto at QoS 1, without image_id (the camera-session path, the one that needs ordering).

- pipeline: topic camera/<uid>/image_json -> MQTT bridge -> broker (ordered per camera) ->
  camera-ingest (functions-framework) -> Redis / MinIO / PostgreSQL;
- direct: topic bench-direct/<uid>/image_json -> one process doing the same work with the same
  domain code (bench/camera/direct.py), source document 001's architecture.

Latency of a capture = the image row's `created_at` (PostgreSQL's clock) minus the time its last
chunk was published (same machine, same clock). Captures are matched to rows by checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg2
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import OUT, ROOT, machine_cpu_seconds, percentiles, runtime_up, stack_env
from devstack.api import PATHS, DevstackError, camera_sim, read_env_file
from functions.runtime import clients

AIM_CHUNKS_PER_S = 800  # 100 cameras x 16 chunks every 2 s
AIM_P99_MS = 250.0
PUBLISHERS = 4  # MQTT connections the simulated cameras share


@dataclass
class CameraRun:
    path: str
    cameras: int
    chunks: int
    period: float
    offered_chunks_per_s: float
    captures: int = 0  # measured captures (after the warm-up)
    finished: int = 0
    chunks_per_s: float = 0.0
    images_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    machine_cpu_pct: float = 0.0  # of all cores together (200% = both cores busy)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def unfinished(self) -> int:
        return self.captures - self.finished


@dataclass(frozen=True)
class Sent:
    checksum: str
    at: float  # time.time() right after the last chunk was handed to the MQTT client
    measured: bool


@dataclass(frozen=True)
class Load:
    """What the simulated cameras send: `cameras` x `chunks` x `chunk_bytes` every `period`."""

    cameras: int
    chunks: int
    chunk_bytes: int
    period: float
    seconds: float
    warmup: float

    @property
    def captures(self) -> int:
        return int((self.warmup + self.seconds) / self.period) * self.cameras


def _publish(root: str, uids: list[str], load: Load, advance: Callable[[int], None]) -> list[Sent]:
    """Publish every camera's captures on schedule; return what was sent when."""
    chunks, period, warmup = load.chunks, load.period, load.warmup
    connected = []
    for n in range(PUBLISHERS):
        client = clients.mqtt.connect(f"objectflow-bench-camera-{uuid.uuid4().hex[:6]}-{n}")
        connected.append(client)
    step = period / len(uids)
    rounds = int((warmup + load.seconds) / period)
    # Images made up front, so generating them does not slow the schedule.
    plan = [
        (r * period + i * step, i, camera_sim.image(chunks * load.chunk_bytes, "jpeg"))
        for r in range(rounds)
        for i in range(len(uids))
    ]
    sent: list[Sent] = []
    start = time.time() + 0.5
    infos = []
    for offset, i, image in plan:
        delay = start + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        client = connected[i % PUBLISHERS]
        topic = f"{root}/{uids[i]}/image_json"
        for payload in camera_sim.Capture(uids[i], image, chunks).payloads():
            infos.append(client.publish(topic, json.dumps(payload), qos=1))
        sent.append(Sent(hashlib.sha256(image).hexdigest(), time.time(), offset >= warmup))
        advance(1)
    for info in infos:
        info.wait_for_publish(timeout=60)
    for client in connected:
        client.disconnect()
        client.loop_stop()
    return sent


def _rows(dsn: str, prefix: str) -> dict[str, float]:
    """checksum -> created_at (epoch seconds) of the image rows of this run's cameras."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT o.checksum, extract(epoch FROM o.created_at)
               FROM thermo.image_objects o JOIN thermo.devices d ON d.id = o.device_id
               WHERE d.device_uid LIKE %s""",
            (f"{prefix}%",),
        )
        return {checksum: float(at) for checksum, at in cur.fetchall()}


def camera_run(path: str, load: Load, advance: Callable[[int], None]) -> CameraRun:
    env = read_env_file(PATHS)
    prefix = f"bench-{path[0]}-{uuid.uuid4().hex[:6]}-"
    uids = [f"{prefix}{n:03d}" for n in range(load.cameras)]
    run = CameraRun(
        path, load.cameras, load.chunks, load.period, load.cameras * load.chunks / load.period
    )
    direct = None
    root = "camera"
    if path == "direct":
        root = f"bench-direct-{prefix.split('-')[2]}"
        direct = subprocess.Popen(
            [sys.executable, "-m", "bench.camera.direct", root],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        if direct.stdout is None or direct.stdout.readline().strip() != "ready":
            raise DevstackError("bench: the direct consumer did not start")
    busy = machine_cpu_seconds()
    began = time.time()
    try:
        sent = _publish(root, uids, load, advance)
        # Drain: wait until every capture has its row, or nothing moved for 15 s.
        found: dict[str, float] = {}
        last_change = time.monotonic()
        while len(found) < len(sent) and time.monotonic() - last_change < 15:
            time.sleep(0.5)
            now = _rows(env["DATABASE_URL"], prefix)
            if len(now) != len(found):
                found, last_change = now, time.monotonic()
    finally:
        if direct is not None:
            direct.terminate()
            direct.wait(timeout=10)
    measured = [s for s in sent if s.measured]
    latencies = [(found[s.checksum] - s.at) * 1000 for s in measured if s.checksum in found]
    run.captures, run.finished = len(measured), len(latencies)
    run.latencies_ms = sorted(round(x, 2) for x in latencies)
    if latencies:
        run.p50_ms, run.p99_ms, run.max_ms = (round(x, 1) for x in percentiles(latencies))
        first = min(s.at for s in measured)
        last = max(found[s.checksum] for s in measured if s.checksum in found)
        run.images_per_s = round(len(latencies) / max(last - first, 1e-9), 1)
        run.chunks_per_s = round(run.images_per_s * load.chunks, 1)
    run.machine_cpu_pct = round(100 * (machine_cpu_seconds() - busy) / (time.time() - began), 1)
    return run


def table(runs: list[CameraRun]) -> Table:
    out = Table(title="camera ingestion: last chunk published -> image row in PostgreSQL")
    for column in (
        "path", "load", "offered chunks/s", "chunks/s", "images/s", "p50 ms", "p99 ms",
        "max ms", "unfinished", "machine CPU",
    ):  # fmt: skip
        out.add_column(column, justify="right" if column != "path" else "left")
    for r in runs:
        out.add_row(
            r.path, f"{r.cameras} cams x {r.chunks} chunks / {r.period:g}s",
            f"{r.offered_chunks_per_s:.0f}", f"{r.chunks_per_s:.0f}", f"{r.images_per_s:.1f}",
            f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}", f"{r.max_ms:.0f}",
            f"{r.unfinished}/{r.captures}", f"{r.machine_cpu_pct:.0f}%",
        )  # fmt: skip
    return out


def plot(runs: list[CameraRun], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (cdf, bars) = pyplot.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        if r.latencies_ms:
            ys = np.arange(1, len(r.latencies_ms) + 1) / len(r.latencies_ms)
            cdf.plot(r.latencies_ms, ys, label=f"{r.path} (p99 {r.p99_ms:.0f} ms)")
    cdf.axvline(AIM_P99_MS, color="grey", linestyle="--", label=f"aim p99 {AIM_P99_MS:g} ms")
    cdf.set_xscale("log")
    cdf.set_xlabel("last chunk -> row (ms)")
    cdf.set_ylabel("captures")
    cdf.legend()
    cdf.set_title("latency (CDF)")
    names = [r.path for r in runs]
    bars.bar(names, [r.chunks_per_s for r in runs], label="achieved")
    bars.axhline(AIM_CHUNKS_PER_S, color="grey", linestyle="--", label="aim")
    bars.set_ylabel("chunks/s")
    bars.set_title(f"throughput (offered {runs[0].offered_chunks_per_s:.0f} chunks/s)")
    bars.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run(
    console: Any,
    *,
    cameras: int,
    chunks: int,
    chunk_bytes: int,
    period: float,
    seconds: float,
    warmup: float,
) -> bool:
    """Both paths, one after the other, under the same load; prints and writes the report.

    Returns False when a capture never finished (lost or stuck); a missed aim is a finding."""
    stack_env()
    runs = []
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        up = bar.add_task("objectflow up --values bench/...", total=1)
        runtime_up()
        bar.update(up, completed=1)
        load = Load(cameras, chunks, chunk_bytes, period, seconds, warmup)
        for path in ("pipeline", "direct"):
            task = bar.add_task(f"camera captures via {path}", total=load.captures)
            runs.append(camera_run(path, load, lambda n, task=task: bar.advance(task, n)))
    console.print(table(runs))
    pipeline, direct = runs
    report = {
        "settings": asdict(load),
        "aims": {"chunks_per_s": AIM_CHUNKS_PER_S, "p99_ms": AIM_P99_MS},
        "met": {r.path: r.chunks_per_s >= 0.95 * r.offered_chunks_per_s
                and r.p99_ms < AIM_P99_MS and not r.unfinished for r in runs},
        "p99_ratio_pipeline_vs_direct": round(pipeline.p99_ms / max(direct.p99_ms, 1e-9), 2),
        "throughput_ratio_pipeline_vs_direct": round(
            pipeline.chunks_per_s / max(direct.chunks_per_s, 1e-9), 2
        ),
        "runs": [asdict(r) for r in runs],
    }  # fmt: skip
    (OUT / "camera.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(runs, OUT / "camera.png")
    console.print(
        f"pipeline vs direct: p99 {report['p99_ratio_pipeline_vs_direct']}x, throughput "
        f"{report['throughput_ratio_pipeline_vs_direct']}x. Aim ({AIM_CHUNKS_PER_S} chunks/s "
        f"sustained, p99 < {AIM_P99_MS:g} ms): pipeline "
        f"{'met' if report['met']['pipeline'] else 'not met'}, direct "
        f"{'met' if report['met']['direct'] else 'not met'}.",
        highlight=False,
    )
    console.print(f"wrote {OUT / 'camera.json'}, {OUT / 'camera.png'}")
    return not any(r.unfinished for r in runs)
