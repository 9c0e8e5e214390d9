"""The local runtime as a whole: no process outlives it, whatever way it ends.

These tests kill and restart the machine's one runtime (run them through /work/wt/e2e.sh), and
leave it running the e2e diagram as they found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from devstack import process, wiring
from devstack.config import PATHS
from devstack.runtime import supervisor
from tests.support import E2E_OVERLAY, scaled, start_stack, wait_for


def objectflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "devstack.cli", *args], check=True)


def runtime_pid() -> int:
    return int(PATHS.pid("runtime").read_text())


def runtime_processes() -> list[psutil.Process]:
    """Every process the supervisor tags (OBJECTFLOW_COMPONENT), whoever started it."""
    found = []
    for proc in psutil.process_iter():
        try:
            if "OBJECTFLOW_COMPONENT" in proc.environ():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def servers(processes: list[psutil.Process]) -> Counter[str]:
    """How many top-level processes run per component (a server's workers not counted)."""
    pids = {p.pid for p in processes}
    return Counter(p.environ()["OBJECTFLOW_COMPONENT"] for p in processes if p.ppid() not in pids)


def test_sigkilled_runtime_leaves_nothing_and_a_held_port_stops_the_next_start() -> None:
    values = wiring.load(E2E_OVERLAY)
    expected = Counter(c.name for c in supervisor.components(values, [E2E_OVERLAY]))
    assert expected["mqtt-bridge"] == 1 and expected["cron-ticker"] == 1

    os.kill(runtime_pid(), signal.SIGKILL)
    start_stack()

    supervisor_pid = runtime_pid()
    processes = runtime_processes()
    assert servers(processes) == expected
    for proc in processes:  # all from this start: descendants of the new supervisor
        assert supervisor_pid in [p.pid for p in proc.parents()], proc.cmdline()
    for name in expected:
        log = (supervisor.LOGS / f"{name}.log").read_text(errors="replace")
        this_start = log.rsplit(supervisor.STARTED, 1)[-1]
        assert "Address already in use" not in this_start, name
    records = supervisor.recorded_children()
    assert {supervisor.health_state(n, records) for n in expected if records[n]["port"]} == {"up"}

    try:
        objectflow("down", "--runtime-only")
        assert not process.alive(supervisor_pid)
        assert runtime_processes() == []
        # Its ports are free now; one a stranger holds stops the next start, naming the holder.
        port = values.function_ports()["echo"]
        stranger = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: process.port_holder(port), what=f"the stranger on {port}")
            up = subprocess.run(
                [sys.executable, "-m", "devstack.cli", "up", "--values", str(E2E_OVERLAY)],
                capture_output=True,
                text=True,
            )
            assert up.returncode != 0
            output = " ".join((up.stdout + up.stderr).split())
            assert f"port {port} (echo) is held by pid {stranger.pid}" in output
            assert runtime_processes() == []
        finally:
            stranger.terminate()
            stranger.wait()
    finally:
        start_stack()


# --- durable acceptance ----------------------------------------------------------------------

# 10 ordered partitions of 100 events (500 under `make chaos`)
KEYS, PER_KEY = 10, scaled(100, 500)


def post_in_flight(broker: str, run: str) -> int:
    """Post KEYS x PER_KEY events, one thread per partition key posting its events in order;
    return how many the broker accepted (202)."""
    import requests
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    def partition(key: int) -> int:
        accepted = 0
        with requests.Session() as session:
            for seq in range(PER_KEY):
                attributes = {
                    "type": "objectflow.test.durable.v1",
                    "source": "/e2e/durable",
                    "id": f"{run}-{key}-{seq}",
                    "partitionkey": f"{run}-{key}",
                }
                # The subscriber stays slow (up to 2 s per event) while the hold key exists.
                data = {"run": run, "key": key, "seq": seq, "hold": f"e2e:hold:{run}"}
                headers, body = to_binary(CloudEvent(attributes, data))
                answer = session.post(broker, headers=headers, data=body, timeout=10)
                accepted += answer.status_code == 202
        return accepted

    with ThreadPoolExecutor(KEYS) as pool:
        return sum(pool.map(partition, range(KEYS)))


def delivered(store: redis.Redis, run: str) -> list[dict[str, Any]]:
    raw = store.lrange("e2e:deliveries:e2e-slow", 0, -1)
    return [d for d in map(json.loads, raw) if d["data"] and d["data"].get("run") == run]


def assert_all_delivered_in_order(store: redis.Redis, run: str) -> None:
    got = wait_for(
        lambda: (
            (found := delivered(store, run))
            and len({d["id"] for d in found}) == KEYS * PER_KEY
            and found
        ),
        timeout=60,
        interval=0.5,
        what="every accepted event at the subscriber",
    )
    for key in range(KEYS):
        first_seen: dict[int, None] = {}  # at-least-once: a redelivery may repeat some
        for d in got:
            if d["data"]["key"] == key:
                first_seen.setdefault(d["data"]["seq"])
        assert list(first_seen) == list(range(PER_KEY)), f"partition {key} out of order"


def pending_in_journal() -> int:
    from devstack.runtime.journal import count_pending

    return count_pending(supervisor.JOURNAL) or 0


@pytest.mark.chaos
def test_neither_a_values_change_restart_nor_a_sigkill_loses_an_accepted_event(
    broker: str, store: redis.Redis, tmp_path: Path
) -> None:
    """Both ways a runtime ends with most accepted events still in flight: restarted by `up`
    for changed values, then (on those values) SIGKILLed; `up` brings back the e2e diagram."""
    changed_run, killed_run = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    changed = tmp_path / "changed.yaml"
    changed.write_text(f"functions:\n  e2e-slow:\n    env: {{E2E_GENERATION: '{changed_run}'}}\n")
    try:
        store.set(f"e2e:hold:{changed_run}", 1, ex=300)
        assert post_in_flight(broker, changed_run) == KEYS * PER_KEY
        assert pending_in_journal() > KEYS * PER_KEY / 2  # most still in flight
        old = runtime_pid()
        command = ["up", "--values", str(E2E_OVERLAY), "--values", str(changed)]
        up = subprocess.Popen([sys.executable, "-m", "devstack.cli", *command])
        wait_for(lambda: not process.alive(old), timeout=60, what="the old runtime to stop")
        store.delete(f"e2e:hold:{changed_run}")  # the restarted subscriber is fast
        assert up.wait(timeout=180) == 0
        assert_all_delivered_in_order(store, changed_run)

        store.set(f"e2e:hold:{killed_run}", 1, ex=300)
        assert post_in_flight(broker, killed_run) == KEYS * PER_KEY
        os.kill(runtime_pid(), signal.SIGKILL)  # the broker runs in the supervisor's process
        assert pending_in_journal() > KEYS * PER_KEY / 2  # most were still in flight
        store.delete(f"e2e:hold:{killed_run}")
        start_stack()
        assert_all_delivered_in_order(store, killed_run)
        wait_for(lambda: pending_in_journal() == 0, what="an empty journal")
    finally:
        store.delete(f"e2e:hold:{changed_run}", f"e2e:hold:{killed_run}")
        start_stack()


# --- scale-out ---------------------------------------------------------------------------------


def test_scale_max_4_runs_four_processes_that_all_receive_events(
    broker: str, store: redis.Redis
) -> None:
    import requests
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    records = supervisor.recorded_children()
    names = ["e2e-workers", "e2e-workers.2", "e2e-workers.3", "e2e-workers.4"]
    assert [supervisor.health_state(n, records) for n in names] == ["up"] * 4
    started = {int(records[n]["pid"] or 0) for n in names}
    run = uuid.uuid4().hex[:8]

    def send(n: int) -> int:
        attributes = {"type": "objectflow.test.scaled.v1", "source": "/e2e", "id": f"{run}-{n}"}
        headers, body = to_binary(CloudEvent(attributes, {"run": run}))
        return requests.post(broker, headers=headers, data=body, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, range(40))) == {202}

    def mine() -> list[dict[str, Any]]:
        raw = store.lrange("e2e:deliveries:e2e-workers", 0, -1)
        return [d for d in map(json.loads, raw) if d["id"].startswith(f"{run}-")]

    got = wait_for(lambda: len({d["id"] for d in mine()}) == 40 and mine(), what="40 deliveries")
    receivers = set()
    for pid in {d["pid"] for d in got}:  # a server's worker, or the server itself
        lineage = {pid, *(p.pid for p in psutil.Process(pid).parents())}
        (server,) = lineage & started
        receivers.add(server)
    assert receivers == started
