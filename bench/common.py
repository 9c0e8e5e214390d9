"""What every benchmark shares: paths, process measurements (psutil), bringing the runtime up
with bench/values-bench.yaml and checking it still runs that way."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil
import requests

from devstack import api
from functions.runtime import clients, settings

ROOT = api.ROOT
OVERLAY = ROOT / "bench" / "values-bench.yaml"
OUT = ROOT / "bench" / "out"
SINK = "bench-sink"
SINK_SOURCE = "bench/runtime/functions.py"  # its entrypoint in values-bench.yaml


def stack_env() -> dict[str, str]:
    """Prepare a benchmark run: bench/out/ exists, the stack's settings (.devstack/env) are in
    os.environ (the caller's environment wins) and the backend clients start afresh. Returns
    the stack's settings."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = api.read_env_file(api.PATHS)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    settings.reset()
    clients.reset()
    return env


def percentiles(latencies: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of `latencies` (at least one), in their unit."""
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
    return p50, p99, float(max(latencies))


# --- process helpers (psutil) --------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (empty when `pid` is gone)."""
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_memory_kb(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in KiB over `pid` and its descendants."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            memory = psutil.Process(p).memory_full_info()  # Linux: PSS from smaps_rollup
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += memory.rss // 1024
        pss += getattr(memory, "pss", 0) // 1024
    return rss, pss


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; everything but idle + iowait)."""
    t = psutil.cpu_times()  # Linux fields; guest time is already part of user
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


# --- bringing the runtime up ---------------------------------------------------------------


def samples(sink_url: str, clear: bool = False) -> list[list[Any]]:
    """What the bench sink has received: [event id, sent, received] rows."""
    response = requests.get(
        f"{sink_url}samples", params={"clear": "1"} if clear else {}, timeout=10
    )
    response.raise_for_status()
    return response.json()


def check_runtime(urls: dict[str, str]) -> None:
    """Refuse to send anything unless the broker routes bench pings to our bench subscriber."""
    try:
        table = requests.get(f"{urls['broker']}routes", timeout=5).json()
        sink_ok = isinstance(samples(urls["direct"]), list)
    except (requests.RequestException, ValueError):
        table, sink_ok = [], False
    routed = any(r["trigger"] == "bench-ping" and r["url"] == urls["direct"] for r in table)
    if not (routed and sink_ok):
        raise api.DevstackError(
            "bench: the runtime no longer runs bench/values-bench.yaml (another `objectflow up "
            "--values ...` replaced it, e.g. a test run); run the bench when the stack is idle"
        )


def runtime_up() -> tuple[dict[str, str], dict[str, list[int]]]:
    """`objectflow up --values bench/values-bench.yaml`; the URLs and pids to measure."""
    command = [sys.executable, "-m", "devstack.cli", "up", "--values", str(OVERLAY)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise api.DevstackError(f"bench: `objectflow up` failed:\n{done.stdout}{done.stderr}")
    values = api.load_values(OVERLAY)
    urls = {
        "broker": api.broker_url(values),
        "direct": f"http://{api.HOST}:{values.function_ports()[SINK]}/",
    }
    broker = api.runtime_pid([OVERLAY])
    if broker is None:
        raise api.DevstackError("bench: the runtime is not running after `objectflow up`")
    check_runtime(urls)
    sink = sorted(  # gunicorn master and its forked worker (same command line)
        pid for pid in process_tree(broker)[1:] if SINK_SOURCE in cmdline(pid)
    )
    return urls, {"client": [os.getpid()], "broker": [broker], "function": sink}
