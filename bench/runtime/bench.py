"""`objectflow bench --only runtime`: what the local runtime costs, measured on this machine.

1. Added latency of one broker hop. Open-loop (events leave on a fixed schedule, never waiting
   for answers) at each rate, the same CloudEvent is POSTed (a) to the broker, which routes it to
   the `bench-sink` subscriber of bench/values-bench.yaml, and (b) straight to that subscriber.
   Latency = time.time() inside the function minus the send time carried in the event's data
   (one machine, one clock). The hop's cost is (a) minus (b). CPU time per event of the broker
   and the function (less affected by a busy machine than latency), and the sender's answer time
   (the broker's 202 waits for the journal's fsync) next to the limit: a lone fsync on the
   journal's disk.
2. Cold start and memory. Process start -> first 2xx answer to a POSTed event, and the RSS of
   the whole process tree (functions-framework runs a gunicorn master plus one worker) after it,
   for echo behind the objectflow adapter (its first event does a Redis round trip) and for a
   bare functions-framework hello-world, each a fresh interpreter; and for echo as the local
   runtime starts it, forked by its zygote (devstack/runtime/zygote.py) after the zygote's
   preload, which a runtime start pays once (RSS counts the pages shared with the zygote, PSS
   splits them).

Results: a rich table, bench/out/runtime.json (raw figures) and bench/out/runtime.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import (
    OUT,
    ROOT,
    check_runtime,
    cpu_seconds,
    machine_cpu_seconds,
    process_tree,
    runtime_up,
    samples,
    tree_memory_kb,
)
from bench.runtime import profile
from devstack.api import HOST, PATHS, DevstackError, Zygote, free_port, read_env_file

PING = "objectflow.bench.ping.v1"
AIM_HOP_MS = 2.0  # one hop adds under 2 ms median
AIM_HOP_P99_MS = {1000: 10.0}  # rate -> p99 added by the hop
AIM_P99_MS = 50.0  # the broker path's p99 at 3,000/s, and "highest rate under" this
PROFILED_RATE = 1000
AIM_COLD_RATIO = 1.5  # adapter cold start within 1.5x of a bare hello-world
AIM_RSS_RATIO = 1.3  # and its RSS within 1.3x
CPU_PARTS = ("client", "broker", "function", "other")  # % of one core, during a latency run
COLD = {  # name -> (entrypoint, event type the first POST carries, data)
    "echo (objectflow adapter)": (
        "functions/echo/function.py:echo",
        "objectflow.echo.requested.v1",
        {"message": "cold start"},
    ),
    "hello (bare functions-framework)": ("bench/runtime/functions.py:hello", PING, {"sent": 0}),
}


# --- 1. latency of one hop --------------------------------------------------------------


@dataclass
class LatencyRun:
    rate: int
    path: str  # "broker" or "direct"
    sent: int = 0
    received: int = 0
    lost: int = 0
    errors: int = 0  # non-2xx answers or connection errors seen by the sender
    achieved_rate: float = 0.0
    sender_lag_p99_ms: float = 0.0  # how late the sender ran behind its schedule
    median_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_percent: dict[str, float] = field(default_factory=dict)  # client, broker, function, other
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)  # broker, function
    answer_median_ms: float = 0.0  # send -> the answer (202 from the broker, 204 direct)
    answer_p99_ms: float = 0.0
    profile: dict[str, Any] = field(default_factory=dict)  # part -> CPU shares (py-spy)
    latencies_ms: list[float] = field(default_factory=list)


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    event_id: str,
    counts: dict[str, int],
    answers: list[float] | None,
) -> None:
    sent = time.time()
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/bench",
        "ce-type": PING,
        "content-type": "application/json",
    }
    try:
        async with session.post(url, data=f'{{"sent": {sent!r}}}', headers=headers) as response:
            await response.read()
            if not 200 <= response.status < 300:
                counts["errors"] += 1
            elif answers is not None:
                answers.append(time.time() - sent)
    except (aiohttp.ClientError, TimeoutError):
        counts["errors"] += 1


async def _open_loop(
    url: str,
    rate: int,
    seconds: float,
    warmup: float,
    tag: str,
    advance: Callable[[int], None],
    answers: list[float],
) -> tuple[list[str], float, list[float], int]:
    """Send at `rate`/s on a fixed schedule; return measured ids, send span, lags, errors (and
    the measured events' answer times in `answers`)."""
    loop = asyncio.get_running_loop()
    n_warm, n = round(rate * warmup), round(rate * seconds)
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=60)
    counts = {"errors": 0}
    ids: list[str] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.05
        first = last = 0.0
        i, total = 0, n_warm + n
        while i < total:
            now = loop.time()
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            batch = 0
            while i < total and start + i / rate <= now:  # everything due by now leaves now
                measured = i >= n_warm
                event_id = f"{tag}-{i}" if measured else f"warm-{tag}-{i}"
                if measured:
                    ids.append(event_id)
                    lags.append(now - (start + i / rate))
                    first = first or now
                    last = now
                timed = answers if measured else None
                task = loop.create_task(_post(session, url, event_id, counts, timed))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                batch += 1
            advance(batch)
            await asyncio.sleep(0)  # let the requests go out
        while tasks:
            await asyncio.wait(list(tasks), timeout=30)
    return ids, max(last - first, 1e-9), lags, counts["errors"]


def latency_run(
    rate: int,
    path: str,
    urls: dict[str, str],
    pids: dict[str, list[int]],
    seconds: float,
    warmup: float,
    advance: Callable[[int], None],
    profiled: bool = False,
) -> LatencyRun:
    sink_url = urls["direct"]
    samples(sink_url, clear=True)
    tag = f"{path}-{rate}-{uuid.uuid4().hex[:8]}"
    check_runtime(urls)  # another `objectflow up` may have swapped the runtime meanwhile
    cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
    machine_before = machine_cpu_seconds()
    answers: list[float] = []
    samplers, traced = [], {"broker": pids["broker"], "function": pids["function"]}
    if profiled:  # the measured window only (after the warm-up)
        for old in OUT.glob("profile-*.txt"):
            old.unlink()
        samplers = profile.record(traced, seconds, OUT, delay=warmup)
    wall = time.monotonic()
    ids, span, lags, errors = asyncio.run(
        _open_loop(urls[path], rate, seconds, warmup, tag, advance, answers)
    )
    wall = time.monotonic() - wall  # CPU shares are over the send window (warm-up included)
    used = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
    cpu = {name: round(100 * seconds_used / wall, 1) for name, seconds_used in used.items()}
    events = round(rate * warmup) + round(rate * seconds)
    per_event = {name: round(1e6 * used[name] / events, 1) for name in ("broker", "function")}
    machine = 100 * (machine_cpu_seconds() - machine_before) / wall
    cpu["other"] = round(max(machine - sum(cpu.values()), 0.0), 1)  # rest of machine + kernel
    wanted = set(ids)
    # Wait for the last deliveries: a backlog still draining is late, not lost; give up after
    # 5 s without a single new arrival (or 120 s in all).
    got: dict[str, list[Any]] = {}
    stalled = time.monotonic() + 5
    deadline = time.monotonic() + 120
    while len(got) < len(wanted) and time.monotonic() < min(stalled, deadline):
        time.sleep(0.2)
        before = len(got)
        got = {row[0]: row for row in samples(sink_url) if row[0] in wanted}
        if len(got) > before:
            stalled = time.monotonic() + 5
    latencies = sorted((received - sent) * 1000 for _id, sent, received in got.values())
    for sampler in samplers:
        sampler.wait()
    shares = {  # this run's samples only: an earlier run's files are gone by now
        part: profile.summary(sorted(OUT.glob(f"profile-{part}-*.txt")))
        for part in (traced if profiled else ())
    }
    run = LatencyRun(
        rate=rate,
        path=path,
        sent=len(ids),
        received=len(got),
        lost=len(wanted) - len(got),
        errors=errors,
        achieved_rate=round((len(ids) - 1) / span, 1),
        sender_lag_p99_ms=round(float(np.percentile(lags, 99)) * 1000, 3),
        cpu_percent=cpu,
        cpu_us_per_event=per_event,
        profile={
            part: {"shares": found[0], "top_frames": found[1]} for part, found in shares.items()
        },
        latencies_ms=[round(x, 4) for x in latencies],
    )
    if answers:
        run.answer_median_ms = round(float(np.median(answers)) * 1000, 3)
        run.answer_p99_ms = round(float(np.percentile(answers, 99)) * 1000, 3)
    if latencies:
        run.median_ms = round(float(np.median(latencies)), 3)
        run.p99_ms = round(float(np.percentile(latencies, 99)), 3)
    return run


# --- 2. cold start and memory -----------------------------------------------------------


@dataclass
class ColdStart:
    name: str
    entrypoint: str
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    pss_mib: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # the tree's CPU until the answer
    processes: int = 0

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_rss(self) -> float:
        return statistics.median(self.rss_mib)

    @property
    def median_pss(self) -> float:
        return statistics.median(self.pss_mib)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu_seconds)


class PortTaken(DevstackError):
    """The free port found was taken before the server bound it (a busy shared machine)."""


class Forked:
    """A process forked by `zygote`, with the few calls of subprocess.Popen the bench uses."""

    def __init__(self, zygote: Zygote, command: list[str], env: dict[str, str], log: int) -> None:
        name = env["K_SERVICE"]
        self.child = zygote.spawn(command[2:], env, ROOT, log, name)  # without `python -m`
        self.pid = self.child.pid

    def poll(self) -> int | None:
        if self.child.running:
            return None
        code = self.child.zygote.codes.get(self.child.id)
        return -1 if code is None else code  # None: the zygote ended first

    def terminate(self) -> None:
        os.kill(self.pid, 15)

    def kill(self) -> None:
        os.kill(self.pid, 9)

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["forked", str(self.pid)], timeout)
            time.sleep(0.01)


def start_zygote() -> Zygote:
    """The runtime's zygote, its exit reports read by a thread of its own."""
    zygote = Zygote(cold_env(), ROOT)
    threading.Thread(target=asyncio.run, args=(zygote.watch(),), daemon=True).start()
    return zygote


def cold_env(name: str = "zygote") -> dict[str, str]:
    return {**read_env_file(PATHS), **os.environ, "K_SERVICE": name, "PYTHONUNBUFFERED": "1"}


def cold_start_once(
    result: ColdStart, event_type: str, data: dict[str, Any], zygote: Zygote | None = None
) -> None:
    for attempt in range(3):
        try:
            return _cold_start(result, event_type, data, zygote)
        except PortTaken:
            if attempt == 2:
                raise


def _cold_start(
    result: ColdStart, event_type: str, data: dict[str, Any], zygote: Zygote | None
) -> None:
    source, target = result.entrypoint.split(":")
    port = free_port()
    name = target.replace("_", "-")
    env = cold_env(name)
    command = [
        sys.executable, "-m", "functions_framework", "--source", str(ROOT / source),
        "--target", target, "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    url = f"http://{HOST}:{port}/"
    log = OUT / f"cold-start-{name}{'-forked' if zygote else ''}.log"
    with log.open("ab") as log_file, requests.Session() as http:
        started = time.perf_counter()
        child: subprocess.Popen[bytes] | Forked = (
            Forked(zygote, command, env, log_file.fileno())
            if zygote is not None
            else subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
        )
        try:
            while True:
                headers = {
                    "ce-specversion": "1.0",
                    "ce-id": f"cold-{uuid.uuid4().hex}",
                    "ce-source": "/bench/cold-start",
                    "ce-type": event_type,
                    "content-type": "application/json",
                }
                try:
                    answer = http.post(url, data=json.dumps(data), headers=headers, timeout=10)
                    if answer.ok:
                        break
                except requests.ConnectionError:
                    pass
                if (
                    child.poll() is not None
                    and b"Address already in use" in log.read_bytes()[-4096:]
                ):
                    raise PortTaken(f"bench: port {port} was taken; see {log}")
                if child.poll() is not None or time.perf_counter() - started > 60:
                    raise DevstackError(f"bench: {result.entrypoint} did not answer; see {log}")
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            tree = process_tree(child.pid)
            used = cpu_seconds(tree)  # children still running count (gunicorn's worker)
            rss, pss = tree_memory_kb(child.pid)
            result.processes = len(tree)
        finally:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    result.seconds.append(round(elapsed, 4))
    result.cpu_seconds.append(round(used, 4))
    result.rss_mib.append(round(rss / 1024, 1))
    result.pss_mib.append(round(pss / 1024, 1))


IMPORTS = ("functions_framework", "flask")  # what the bare hello-world imports
ECHO_MODULE = "functions.echo.function"


def import_times(module: str, repeats: int = 3) -> dict[str, float]:
    """`python -X importtime`: cumulative ms of importing `module` after functions-framework,
    and of its largest objectflow-owned parts (the best of `repeats`, as contention only adds)."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        code = f"import {', '.join(IMPORTS)}; import {module}"
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        for line in done.stderr.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) != 3 or not parts[1].strip().isdigit():
                continue
            name = parts[2].strip()
            if name in IMPORTS or name.startswith("functions.") or name == "pydantic":
                ms = int(parts[1]) / 1000
                best[name] = min(best.get(name, ms), ms)
    return best


# --- report -------------------------------------------------------------------------------


def _yes(met: bool) -> str:
    return "[green]yes[/]" if met else "[red]no[/]"


def fsync_probe(directory: Path, n: int = 50) -> tuple[float, float]:
    """Median and p99 ms of a lone 100-byte write + fsync in `directory` (the journal's disk):
    the floor under a durable 202 that no broker can beat."""
    times = []
    path = directory / f"fsync-probe-{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(n):
            started = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return float(np.median(times)), float(np.percentile(times, 99))


def highest_rate_under(runs: list[LatencyRun], p99_ms: float) -> int | None:
    """The highest measured rate whose broker path kept p99 under `p99_ms` and lost nothing."""
    good = [r.rate for r in runs if r.path == "broker" and r.p99_ms < p99_ms and r.lost == 0]
    return max(good) if good else None


def hop_aims_met(runs: list[LatencyRun]) -> dict[str, bool]:
    """Each aim of issue 11 for the rates measured: median and p99 added, the 3,000/s p99."""
    by = {(r.rate, r.path): r for r in runs}
    met = {}
    for rate in sorted({r.rate for r in runs}):
        broker, direct = by[(rate, "broker")], by[(rate, "direct")]
        if rate <= PROFILED_RATE:
            met[f"{rate} median added"] = broker.median_ms - direct.median_ms <= AIM_HOP_MS
        if rate in AIM_HOP_P99_MS:
            met[f"{rate} p99 added"] = broker.p99_ms - direct.p99_ms <= AIM_HOP_P99_MS[rate]
        if rate > PROFILED_RATE:
            met[f"{rate} p99"] = broker.p99_ms <= AIM_P99_MS and broker.lost == 0
    return met


def table(
    runs: list[LatencyRun],
    cold: dict[str, ColdStart],
    forked: ColdStart,
    fsync: tuple[float, float],
    imports: dict[str, float],
) -> Table:
    out = Table(title="objectflow local runtime", show_lines=False)
    columns = ("measure", "objectflow (broker)", "design (direct POST)", "limit", "Δ / ratio")
    for column in (*columns, "aim", "met"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    by = {(r.rate, r.path): r for r in runs}
    fsync_text = f"fsync {fsync[0]:.2f} / {fsync[1]:.2f}"
    for rate in sorted({r.rate for r in runs}):
        broker, direct = by[(rate, "broker")], by[(rate, "direct")]
        out.add_section()
        out.add_row(f"[bold]{rate} events/s[/]", "", "", "", "", "", "")
        hop = broker.median_ms - direct.median_ms
        median_aim = rate <= PROFILED_RATE
        out.add_row(
            "  latency median",
            f"{broker.median_ms:.2f} ms",
            f"{direct.median_ms:.2f} ms",
            "",
            f"+{hop:.2f} ms",
            f"≤ {AIM_HOP_MS:g} ms added" if median_aim else "",
            _yes(hop <= AIM_HOP_MS) if median_aim else "",
        )
        added_p99 = broker.p99_ms - direct.p99_ms
        if rate in AIM_HOP_P99_MS:
            p99_aim, p99_met = (
                f"≤ {AIM_HOP_P99_MS[rate]:g} ms added",
                added_p99 <= AIM_HOP_P99_MS[rate],
            )
        elif rate > PROFILED_RATE:
            p99_aim, p99_met = f"≤ {AIM_P99_MS:g} ms", broker.p99_ms <= AIM_P99_MS
        else:
            p99_aim, p99_met = "", None
        out.add_row(
            "  latency p99",
            f"{broker.p99_ms:.2f} ms",
            f"{direct.p99_ms:.2f} ms",
            "",
            f"+{added_p99:.2f} ms",
            p99_aim,
            "" if p99_met is None else _yes(p99_met),
        )
        out.add_row(
            "  answer median / p99",
            f"{broker.answer_median_ms:.2f} / {broker.answer_p99_ms:.2f} ms",
            f"{direct.answer_median_ms:.2f} / {direct.answer_p99_ms:.2f} ms",
            f"{fsync_text} ms",
            "",
            "202 after fsync",
            "",
        )
        out.add_row(
            "  send rate",
            f"{broker.achieved_rate:.0f}/s",
            f"{direct.achieved_rate:.0f}/s",
            "",
            "",
            f"{rate}/s",
            "",
        )
        out.add_row(
            "  lost of sent",
            f"{broker.lost} of {broker.sent}",
            f"{direct.lost} of {direct.sent}",
            "",
            "",
            "0",
            _yes(broker.lost == 0 and direct.lost == 0),
        )
        out.add_row(
            "  errors; lag p99",
            f"{broker.errors}; {broker.sender_lag_p99_ms:.2f} ms",
            f"{direct.errors}; {direct.sender_lag_p99_ms:.2f} ms",
            "",
            "",
            "",
            "",
        )
        out.add_row(
            "  CPU% c/b/f/other",
            "/".join(f"{broker.cpu_percent[k]:.0f}" for k in CPU_PARTS),
            "/".join(f"{direct.cpu_percent[k]:.0f}" for k in CPU_PARTS),
            "",
            "",
            "",
            "",
        )
        out.add_row(
            "  CPU µs/event b/f",
            "/".join(f"{broker.cpu_us_per_event[k]:.0f}" for k in ("broker", "function")),
            "/".join(f"{direct.cpu_us_per_event[k]:.0f}" for k in ("broker", "function")),
            "",
            "",
            "",
            "",
        )
    highest = highest_rate_under(runs, AIM_P99_MS)
    out.add_row(
        f"  highest rate, p99 < {AIM_P99_MS:g} ms",
        f"{highest}/s" if highest else "none",
        "",
        "",
        "",
        f"≥ {max(r.rate for r in runs)}/s",
        _yes(highest == max(r.rate for r in runs)),
    )
    adapter, bare = cold.values()
    out.add_section()
    out.add_row(
        f"[bold]cold start[/] (n={len(adapter.seconds)})", "echo", "hello-world", "", "", "", ""
    )
    ratio = adapter.median_seconds / bare.median_seconds
    out.add_row(
        "  start->1st event",
        f"{adapter.median_seconds * 1000:.0f} ms",
        f"{bare.median_seconds * 1000:.0f} ms",
        "",
        f"{ratio:.2f}x",
        f"≤ {AIM_COLD_RATIO:g}x",
        _yes(ratio <= AIM_COLD_RATIO),
    )
    rss_ratio = adapter.median_rss / bare.median_rss
    out.add_row(
        f"  RSS ({adapter.processes} procs)",
        f"{adapter.median_rss:.1f} MiB",
        f"{bare.median_rss:.1f} MiB",
        "",
        f"{rss_ratio:.2f}x",
        f"≤ {AIM_RSS_RATIO:g}x",
        _yes(rss_ratio <= AIM_RSS_RATIO),
    )
    out.add_row(
        "  PSS (same tree)",
        f"{adapter.median_pss:.1f} MiB",
        f"{bare.median_pss:.1f} MiB",
        "",
        f"{adapter.median_pss / bare.median_pss:.2f}x",
        "",
        "",
    )
    out.add_row(
        "  CPU s to 1st event",
        f"{adapter.median_cpu:.2f} s",
        f"{bare.median_cpu:.2f} s",
        "",
        f"{adapter.median_cpu / bare.median_cpu:.2f}x",
        "",
        "",
    )
    forked_ratio = forked.median_seconds / bare.median_seconds
    out.add_row(
        "  echo forked by the zygote",
        f"{forked.median_seconds * 1000:.0f} ms",
        f"{bare.median_seconds * 1000:.0f} ms",
        "",
        f"{forked_ratio:.2f}x",
        f"≤ {AIM_COLD_RATIO:g}x",
        _yes(forked_ratio <= AIM_COLD_RATIO),
    )
    for label, mine, theirs in (
        ("    its RSS", forked.median_rss, bare.median_rss),
        ("    its PSS", forked.median_pss, bare.median_pss),
    ):
        out.add_row(
            label,
            f"{mine:.1f} MiB",
            f"{theirs:.1f} MiB",
            "",
            f"{mine / theirs:.2f}x",
            "",
            "",
        )
    out.add_row(
        "    its CPU s to 1st event",
        f"{forked.median_cpu:.2f} s",
        f"{bare.median_cpu:.2f} s",
        "",
        f"{forked.median_cpu / bare.median_cpu:.2f}x",
        "",
        "",
    )
    framework = imports.get(IMPORTS[0], 0.0)  # functions-framework imports flask itself
    out.add_row(
        "  import (-X importtime)",
        f"+{imports.get(ECHO_MODULE, 0.0):.0f} ms",
        f"{framework:.0f} ms",
        "",
        f"{(framework + imports.get(ECHO_MODULE, 0.0)) / framework:.2f}x" if framework else "",
        "",
        "",
    )
    parts = sorted(
        (name for name in imports if name.startswith("functions.") and name != ECHO_MODULE),
        key=lambda name: -imports[name],
    )
    for name in [*parts[:4], "pydantic"]:
        if name in imports:
            out.add_row(f"    {name}", f"{imports[name]:.0f} ms", "", "", "", "", "")
    return out


def profile_table(run: LatencyRun) -> Table:
    """Where the CPU time per event goes (py-spy shares x measured CPU µs/event)."""
    out = Table(title=f"CPU per event at {run.rate}/s via the broker (py-spy)")
    for column in ("process", "part", "share", "µs/event"):
        out.add_column(column, justify="left" if column in ("process", "part") else "right")
    for process, found in run.profile.items():
        out.add_section()
        for part, share in found["shares"].items():
            us = share * run.cpu_us_per_event[process]
            out.add_row(process, part, f"{share:.0%}", f"{us:.0f}")
    return out


def plot(runs: list[LatencyRun], cold: dict[str, ColdStart], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, start, memory) = plt.subplots(
        1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [2, 1, 1]}
    )
    rates = sorted({r.rate for r in runs})
    by = {(r.rate, r.path): r for r in runs}
    series = [
        ("broker median", "broker", "median_ms", "#1f77b4"),
        ("broker p99", "broker", "p99_ms", "#aec7e8"),
        ("direct median", "direct", "median_ms", "#ff7f0e"),
        ("direct p99", "direct", "p99_ms", "#ffbb78"),
    ]
    width = 0.2
    for k, (label, route, attr, colour) in enumerate(series):
        xs = [i + (k - 1.5) * width for i in range(len(rates))]
        heights = [getattr(by[(rate, route)], attr) for rate in rates]
        bars = lat.bar(xs, heights, width, label=label, color=colour)
        lat.bar_label(bars, fmt="%.2f", fontsize=7)
    lat.set_xticks(range(len(rates)), [f"{rate} events/s" for rate in rates])
    lat.set_yscale("log")  # sub-millisecond medians and multi-second backlogs on one axis
    lat.set_ylabel("latency, ms, log scale (send -> received in function)")
    lat.set_title("one broker hop vs direct POST")
    lat.legend(fontsize=8)

    names = ["echo\n(adapter)", "hello\n(bare ff)"]
    adapter, bare = cold.values()
    for axis, attr, unit, title in (
        (start, "seconds", "s", "cold start: start -> first 2xx"),
        (memory, "rss_mib", "MiB", "RSS of process tree after 1st event"),
    ):
        values = [getattr(adapter, attr), getattr(bare, attr)]
        medians = [statistics.median(v) for v in values]
        spread = [[m - min(v) for m, v in zip(medians, values, strict=True)],
                  [max(v) - m for m, v in zip(medians, values, strict=True)]]  # fmt: skip
        bars = axis.bar(names, medians, yerr=spread, capsize=4, color=["#2ca02c", "#7f7f7f"])
        axis.bar_label(bars, fmt="%.2f" if unit == "s" else "%.0f", fontsize=8)
        axis.set_ylabel(f"median ({unit}), whiskers min-max")
        axis.set_title(title)
    fig.suptitle(f"objectflow local runtime bench ({os.cpu_count()} cores, {platform.node()})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- entry point ----------------------------------------------------------------------------


def run(
    console: Console,
    seconds: float = 10.0,
    warmup: float = 2.0,
    rates: str = "200,1000,3000",
    repeats: int = 5,
    profile: bool = False,
) -> bool:
    """Run both benchmarks, print the table, write the JSON and the PNG.

    Returns False only when events were lost; a missed aim is a finding, not a failure."""
    OUT.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    try:
        measured = tuple(int(rate) for rate in rates.split(","))
    except ValueError:
        raise DevstackError(f"--set rates: {rates!r} is not comma-separated integers") from None
    runs: list[LatencyRun] = []
    cold = {name: ColdStart(name, entry) for name, (entry, _t, _d) in COLD.items()}
    echo = next(iter(COLD))
    forked = ColdStart(f"{echo}, forked by the zygote", COLD[echo][0])
    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        up = bar.add_task("objectflow up --values bench/...", total=1)
        urls, pids = runtime_up()
        bar.update(up, completed=1)
        fsync = fsync_probe(PATHS.data("runtime"))  # the journal's directory
        for rate in measured:
            for path in ("broker", "direct"):
                total = round(rate * warmup) + round(rate * seconds)
                task = bar.add_task(f"{rate}/s via {path} ({warmup:g}s warm-up)", total=total)
                profiled = profile and path == "broker" and rate == PROFILED_RATE
                runs.append(
                    latency_run(
                        rate, path, urls, pids, seconds, warmup,
                        lambda n, task=task: bar.advance(task, n), profiled,
                    )
                )  # fmt: skip
        task = bar.add_task("cold starts", total=repeats * (len(COLD) + 1))
        zygote = start_zygote()
        try:
            for _ in range(repeats):  # alternate, so drift hits all alike
                for name, (_entry, event_type, data) in COLD.items():
                    cold_start_once(cold[name], event_type, data)
                    bar.advance(task)
                cold_start_once(forked, *COLD[echo][1:], zygote)
                bar.advance(task)
        finally:
            zygote.close()

    imports = import_times(ECHO_MODULE)
    console.print(table(runs, cold, forked, fsync, imports))
    for profiled_run in runs:
        if profiled_run.profile:
            console.print(profile_table(profiled_run))
    by = {(r.rate, r.path): r for r in runs}
    hops = {
        rate: round(by[(rate, "broker")].median_ms - by[(rate, "direct")].median_ms, 3)
        for rate in measured
    }
    adapter, bare = cold.values()
    cold_ratio = adapter.median_seconds / bare.median_seconds
    rss_ratio = adapter.median_rss / bare.median_rss
    aims = hop_aims_met(runs)
    report = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "seconds": seconds,
            "warmup": warmup,
            "rates": list(measured),
            "repeats": repeats,
            "profile": profile,
        },
        "aims": {
            "hop_median_ms": AIM_HOP_MS,
            "hop_p99_added_ms": AIM_HOP_P99_MS,
            "p99_ms_above_1000": AIM_P99_MS,
            "hop_met": aims,
            "cold_start_ratio": AIM_COLD_RATIO,
            "cold_start_met": cold_ratio <= AIM_COLD_RATIO,
            "rss_ratio": AIM_RSS_RATIO,
            "rss_met": rss_ratio <= AIM_RSS_RATIO,
        },
        "fsync_ms": {"median": round(fsync[0], 3), "p99": round(fsync[1], 3)},
        "hop_added_median_ms": {str(rate): hop for rate, hop in hops.items()},
        "highest_rate_p99_under_50ms": highest_rate_under(runs, AIM_P99_MS),
        "latency": [asdict(r) for r in runs],
        "cold_start": [
            {
                **asdict(c),
                "median_seconds": c.median_seconds,
                "median_rss_mib": c.median_rss,
                "median_pss_mib": c.median_pss,
                "median_cpu_seconds": c.median_cpu,
            }
            for c in (*cold.values(), forked)
        ],
        "cold_start_ratio": round(cold_ratio, 3),
        "cold_start_forked_ratio": round(forked.median_seconds / bare.median_seconds, 3),
        "import_ms": imports,
        "rss_ratio": round(rss_ratio, 3),
        "total_seconds": round(time.monotonic() - began, 1),
    }
    (OUT / "runtime.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(runs, cold, OUT / "runtime.png")
    met = all(aims.values()) and cold_ratio <= AIM_COLD_RATIO and rss_ratio <= AIM_RSS_RATIO
    lost = sum(r.lost for r in runs)
    console.print(
        f"one hop adds {', '.join(f'{h:+.2f} ms at {r}/s' for r, h in hops.items())} (median); "
        f"cold start {cold_ratio:.2f}x bare (aim <= {AIM_COLD_RATIO:g}x), RSS {rss_ratio:.2f}x "
        f"(aim <= {AIM_RSS_RATIO:g}x); lost events {lost}; load average "
        f"{report['machine']['load_average_1m']} on {os.cpu_count()} cores (shared machine). "
        f"{'[green]All aims met.' if met and not lost else '[red]Not every aim met.'}[/]\n"
        f"echo's first event includes a Redis round trip (idempotency check + HSETNX).\n"
        f"wrote {OUT / 'runtime.json'}, {OUT / 'runtime.png'} "
        f"in {report['total_seconds']:.0f}s; the runtime stays up with the bench overlay.",
        highlight=False,
    )
    return not lost
