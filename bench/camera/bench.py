"""`objectflow bench --only camera`: camera ingestion, this pipeline vs a direct consumer.

Simulated cameras publish open-loop (on a fixed schedule, never waiting for the pipeline): each
of `cameras` sends a capture of `chunks` chunks every `period` seconds, spread evenly, through
Mosquitto at QoS 1, without image_id (the camera-session path, the one that needs ordering).

- pipeline: topic camera/<uid>/image_json -> MQTT bridge -> broker (ordered per camera) ->
  camera-ingest (functions-framework) -> Redis / MinIO / PostgreSQL;
- direct-sink: topic bench-sink-<run>/<uid>/image_json -> an MQTT bridge of the bench's own (the
  product's code) whose sink is camera-ingest itself (`sources.mqtt-bridge.sink`: no broker hop;
  its lanes keep each camera's order);
- direct: topic bench-direct/<uid>/image_json -> one process doing the same work with the same
  domain code (bench/camera/direct.py), source document 001's architecture;
- limit: each service alone for its share of the work (bench/camera/limits.py).

Every path runs at each load of `cameras` (default 10, 30 and 100 cameras: 80, 240 and 800
chunks/s with the default capture).

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

import psycopg2
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.camera import limits
from bench.common import OUT, OVERLAY, ROOT, machine_cpu_seconds, percentiles, runtime_up, stack_env
from devstack.api import HOST, PATHS, DevstackError, camera_sim, load_values, read_env_file
from functions.runtime import clients

PATHS_MEASURED = ("pipeline", "direct-sink", "direct")
AIM_RATIO = 0.9  # pipeline >= 0.9x the direct consumer's chunks/s at every load
AIM_P99_MS = 250.0  # at 240 chunks/s
AIM_P99_AT = 240
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
    elif path == "direct-sink":
        root = f"bench-sink-{prefix.split('-')[2]}"
        direct = _sink_bridge(root, env)
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
            direct.wait(timeout=15)
        if path == "direct-sink":  # drop the bench bridge's persistent session
            clients.mqtt.connect(f"objectflow-bench-{root}", clean_start=True).disconnect()
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


def _sink_bridge(root: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """The product's MQTT bridge with camera-ingest as its sink, on `root`/+/image_json."""
    port = load_values(OVERLAY).function_ports()["camera-ingest"]
    route = {"topic": f"{root}/+/image_json", "type": "objectflow.camera.chunk.received.v1",
             "subject-segment": 1, "partition-segment": 1}  # fmt: skip
    log = OUT / f"camera-{root}-bridge.log"
    with log.open("w") as out:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "functions.sources.mqtt_bridge"],
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "K_SINK": f"http://{HOST}:{port}/",
                "OBJECTFLOW_MQTT_ROUTES": json.dumps([route]),
                "OBJECTFLOW_MQTT_CLIENT_ID": f"objectflow-bench-{root}",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + 30
    while '"subscribed"' not in log.read_text():
        if bridge.poll() is not None or time.monotonic() > deadline:
            raise DevstackError(f"bench: the direct-sink bridge did not subscribe ({log})")
        time.sleep(0.1)
    return bridge


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


def limits_table(found: list[limits.Limit]) -> Table:
    out = Table(title="the limit: each service alone for its share of the camera work")
    for column in ("service", "work", "per s", "as chunks/s"):
        out.add_column(column, justify="left" if column in ("service", "work") else "right")
    for x in found:
        out.add_row(x.service, x.work, f"{x.per_s:.0f}", f"{x.chunks_per_s:.0f}")
    return out


def plot(runs: list[CameraRun], found: list[limits.Limit], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (rate, p99) = pyplot.subplots(1, 2, figsize=(11, 4))
    offered = sorted({r.offered_chunks_per_s for r in runs})
    for name in PATHS_MEASURED:
        mine = sorted((r for r in runs if r.path == name), key=lambda r: r.offered_chunks_per_s)
        xs = [r.offered_chunks_per_s for r in mine]
        rate.plot(xs, [r.chunks_per_s for r in mine], marker="o", label=name)
        p99.plot(xs, [max(r.p99_ms, 1) for r in mine], marker="o", label=name)
    rate.plot(offered, offered, color="grey", linestyle=":", label="offered")
    slowest = min(found, key=lambda x: x.chunks_per_s)
    rate.axhline(slowest.chunks_per_s, color="red", linestyle="--",
                 label=f"limit: {slowest.service} alone")  # fmt: skip
    rate.set_xlabel("offered chunks/s")
    rate.set_ylabel("achieved chunks/s")
    rate.set_title("throughput")
    rate.legend()
    p99.axhline(AIM_P99_MS, color="grey", linestyle="--", label=f"aim p99 {AIM_P99_MS:g} ms")
    p99.set_yscale("log")
    p99.set_xlabel("offered chunks/s")
    p99.set_ylabel("p99 last chunk -> row (ms)")
    p99.set_title("latency")
    p99.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _cameras(raw: str) -> list[int]:
    try:
        found = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        found = []
    if not found or min(found) < 1:
        raise DevstackError(f"--set cameras: {raw!r} is no comma-separated list of counts")
    return found


def run(
    console: Any,
    *,
    cameras: str,
    chunks: int,
    chunk_bytes: int,
    period: float,
    limit_seconds: float,
    seconds: float,
    warmup: float,
) -> bool:
    """Every path at every load, then the limits; prints and writes the report.

    Returns False when a capture never finished (lost or stuck); a missed aim is a finding."""
    stack_env()
    loads = [Load(n, chunks, chunk_bytes, period, seconds, warmup) for n in _cameras(cameras)]
    runs = []
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        up = bar.add_task("objectflow up --values bench/...", total=1)
        runtime_up()
        bar.update(up, completed=1)
        for load in loads:
            for path in PATHS_MEASURED:
                task = bar.add_task(f"{load.cameras} cameras via {path}", total=load.captures)
                runs.append(camera_run(path, load, lambda n, task=task: bar.advance(task, n)))
        task = bar.add_task("limits: each service alone", total=4)
        found = limits.measure(chunks, chunk_bytes, limit_seconds)
        bar.update(task, completed=4)
    console.print(table(runs))
    console.print(limits_table(found))
    by = {(r.cameras, r.path): r for r in runs}
    ratios = {
        str(load.cameras): {
            path: round(by[load.cameras, path].chunks_per_s
                        / max(by[load.cameras, "direct"].chunks_per_s, 1e-9), 2)
            for path in ("pipeline", "direct-sink")
        }
        for load in loads
    }  # fmt: skip
    at_aim = [r for r in runs if r.path == "pipeline" and r.offered_chunks_per_s == AIM_P99_AT]
    report = {
        "settings": {"loads": [asdict(x) for x in loads], "limit_seconds": limit_seconds},
        "aims": {"ratio_vs_direct": AIM_RATIO, "p99_ms": AIM_P99_MS, "p99_at": AIM_P99_AT},
        "throughput_ratio_vs_direct": ratios,
        "met": {
            "ratio_at_every_load": all(x["pipeline"] >= AIM_RATIO for x in ratios.values()),
            "p99_at_240": bool(at_aim) and all(r.p99_ms <= AIM_P99_MS for r in at_aim),
        },
        "limits": [asdict(x) for x in found],
        "runs": [asdict(r) for r in runs],
    }
    (OUT / "camera.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(runs, found, OUT / "camera.png")
    for cams, ratio in ratios.items():
        console.print(
            f"{cams} cameras: pipeline {ratio['pipeline']}x, direct-sink {ratio['direct-sink']}x "
            f"the direct consumer's chunks/s (aim >= {AIM_RATIO}x)",
            highlight=False,
        )
    p99 = f"{at_aim[0].p99_ms:.0f} ms" if at_aim else "not measured"
    console.print(
        f"pipeline p99 at {AIM_P99_AT} chunks/s: {p99} (aim <= {AIM_P99_MS:g} ms). Aims: ratio "
        f"{'met' if report['met']['ratio_at_every_load'] else 'not met'}, p99 "
        f"{'met' if report['met']['p99_at_240'] else 'not met'}.",
        highlight=False,
    )
    console.print(f"wrote {OUT / 'camera.json'}, {OUT / 'camera.png'}")
    return not any(r.unfinished for r in runs)
