"""`objectflow bench --only rollouts`: rollouts over simulated devices, end to end.

One simulator process (devstack/ota/sim.py, bench.ota_status.bench.Devices) runs `devices` +
`abort_devices` devices, each its own MQTT session, recording when each device's first command
arrived (the devices' clock is this machine's). Two rollouts, one after the other, both paced
at `max_per_minute`:

1. healthy: waves [1, 10, 100] over `devices` devices. Measured at the devices: the commands/s
   of the last wave once the token bucket's first burst (BURST_S seconds of the rate) is spent,
   and the most commands in any 60 s; the wall time from POST /rollouts to the last `done`
   (its status.applied row in ota.job_events) and to the rollout's own `done`.
2. abort: waves [100] over `abort_devices` devices, 40 % failing, abort at 20 % of at least 20
   finished. The crossing instant is the occurred_at of the status.applied row (written in the
   transaction that commits the job's error) after which the abort rule first holds, replayed
   in the order those rows were written; the pause instant is the created_at of the rollout's
   rollout.paused outbox row (same transaction as the pause). Then the rollout is cancelled.

Every job event takes the product's path (outbox -> ota-outbox-relay -> Kafka job.events ->
ota-job-events -> broker -> ota-rollouts), so what the bench measures is what an operator gets.
"""

from __future__ import annotations

import json
import math
import os
import time
from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import requests
from psycopg2.extras import execute_values
from rich.table import Table

from bench.common import OUT, ROOT, cmdline, cpu_seconds, process_tree, runtime_up, stack_env
from bench.ota_status.bench import Devices
from bench.runtime import profile as spy
from devstack.api import DevstackError, load_values, ota_sim
from functions.ota import waves

PREFIX = "bench-rollout"
FIRMWARE = "bench-rollout-4k"  # kept in ota.firmwares and MinIO between runs, like the devices
HEALTHY_WAVES = [1, 10, 100]
ABORT = {"failure_percent": 20, "min_finished": 20}
FAILING_SHARE = 0.4
AIM_PAUSE_S = 2.0
PROFILED = ("ota-rollouts", "ota-dispatcher")
TOPIC, GROUPS = "job.events", ("scheduler", "command-dispatcher")  # values.yaml's Kafka sources
MEASURED = ("ota-rollouts", "ota-dispatcher", "ota-status", "ota-scheduler")
# The source document (002) has no rollout: its one figure near this is a fleet of 500+ devices
# sending 1,000+ messages a minute, and one incident where commands to all 500 devices at once
# overloaded the MQTT broker (fixed by rate limiting and batches).
DESIGN = {"devices": 500, "messages_per_minute": 1000}


class Rows:
    """The bench's devices (`bench-rollout-NNNNN`, kept) and rollouts in the shared ota schema."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def sql(self, query: str, params: Any = (), rows: list[tuple[Any, ...]] | None = None) -> Any:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            if rows is not None:
                execute_values(cur, query, rows, page_size=1000)
            else:
                cur.execute(query, params)
            found = cur.fetchall() if cur.description else []
        conn.close()
        return found

    def devices(self, kind: str, count: int) -> list[str]:
        ids = [f"{PREFIX}-{kind}-{n:05d}" for n in range(count)]
        self.sql("INSERT INTO ota.devices (device_id, model, timezone) VALUES %s "
                 "ON CONFLICT (device_id) DO NOTHING",
                 rows=[(d, "bench", "UTC") for d in ids])  # fmt: skip
        return ids

    def rollout(self, rollout_id: str) -> tuple[str, int, float] | None:
        """(status, version, updated_at epoch)."""
        found = self.sql("SELECT status, version, extract(epoch FROM updated_at)::float8 "
                         "FROM ota.rollouts WHERE id = %s", (rollout_id,))  # fmt: skip
        return tuple(found[0]) if found else None

    def in_flight(self, rollout_id: str) -> int:
        [(count,)] = self.sql("SELECT count(*) FROM ota.jobs WHERE rollout_id = %s AND status "
                              "NOT IN ('done', 'error', 'timed_out', 'cancelled')",
                              (rollout_id,))  # fmt: skip
        return int(count)

    def released(self, rollout_id: str, wave: int) -> float | None:
        """Jobs/s ota-rollouts created for the wave once its bucket's burst was spent: the
        pacing as applied, before the scheduler, dispatcher and MQTT."""
        times = sorted(r[0] for r in self.sql(
            "SELECT extract(epoch FROM j.created_at)::float8 FROM ota.rollout_devices rd "
            "JOIN ota.jobs j ON j.rollout_id = rd.rollout_id AND j.device_id = rd.device_id "
            "WHERE rd.rollout_id = %s AND rd.wave = %s", (rollout_id, wave)))  # fmt: skip
        steady = [t for t in times if times and t >= times[0] + waves.BURST_S]
        span = steady[-1] - steady[0] if len(steady) > 1 else 0.0
        return round((len(steady) - 1) / span, 1) if span else None

    def finals(self, rollout_id: str) -> list[tuple[str, float]]:
        """(status, occurred_at epoch) of the jobs' final status.applied rows, in write order."""
        return self.sql(
            "SELECT e.status, extract(epoch FROM e.occurred_at)::float8 FROM ota.job_events e "
            "JOIN ota.jobs j ON j.id = e.job_id WHERE j.rollout_id = %s "
            "AND e.type = 'status.applied' AND e.status IN ('done', 'error', 'timed_out') "
            "ORDER BY e.id",
            (rollout_id,),
        )

    def outbox_at(self, rollout_id: str, kind: str) -> float | None:
        found = self.sql("SELECT extract(epoch FROM created_at)::float8 FROM ota.event_outbox "
                         "WHERE aggregate_id = %s AND event_type = %s ORDER BY id LIMIT 1",
                         (rollout_id, kind))  # fmt: skip
        return found[0][0] if found else None

    def clear(self) -> None:
        """The bench's rollouts, their jobs (with events and statuses) and sent outbox rows."""
        ids = [r[0] for r in self.sql("SELECT id FROM ota.rollouts WHERE firmware_version = %s",
                                      (FIRMWARE,))]  # fmt: skip
        self.sql("DELETE FROM ota.rollout_devices WHERE rollout_id = ANY(%s::uuid[])", (ids,))
        self.sql("DELETE FROM ota.jobs WHERE device_id LIKE %s", (f"{PREFIX}-%",))
        self.sql("DELETE FROM ota.event_outbox WHERE sent_at IS NOT NULL AND "
                 "(partition_key LIKE %s OR aggregate_id = ANY(%s))",
                 (f"{PREFIX}-%", [str(i) for i in ids]))  # fmt: skip
        self.sql("DELETE FROM ota.rollouts WHERE id = ANY(%s::uuid[])", (ids,))


def function_pids(broker: int, values: Any) -> dict[str, list[int]]:
    """The runtime's processes of the functions MEASURED (gunicorn master and worker)."""
    ports = values.function_ports()
    tree = [(pid, cmdline(pid)) for pid in process_tree(broker)[1:]]
    return {
        name: [pid for pid, line in tree if f"--port {ports[name]}" in line] for name in MEASURED
    } | {"broker": [broker]}


def drain(env: dict[str, str], rows: Rows, timeout: float = 180) -> float:
    """Until the healthy rollout's last events are through the relay and read from job.events
    by the runtime's consumer groups, so the abort rollout's events queue behind none; the
    seconds that took."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    began = time.monotonic()
    wait("the bench's outbox rows relayed", lambda: not rows.sql(
        "SELECT 1 FROM ota.event_outbox WHERE sent_at IS NULL AND partition_key LIKE %s LIMIT 1",
        (f"{PREFIX}-%",)), timeout, interval=0.5)  # fmt: skip
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    consumer = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    partitions = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC) or ()]

    def lag() -> int:
        ends = consumer.end_offsets(partitions)
        left = 0
        for group in GROUPS:
            committed = admin.list_group_offsets({group: None})[group]
            left += sum(end - committed[tp].offset for tp, end in ends.items() if tp in committed)
        return left

    try:
        wait("job.events read by the runtime", lambda: lag() <= 0, timeout, interval=0.5)
    finally:
        consumer.close()
        admin.close()
    return round(time.monotonic() - began, 1)


def wait(what: str, condition: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise DevstackError(f"bench: {what} not reached in {timeout:.0f} s")
        time.sleep(interval)
    return found


def create(api: str, body: dict[str, Any]) -> tuple[str, float]:
    """POST /rollouts; the rollout id and the instant it was asked for."""
    asked = time.time()
    answer = requests.post(f"{api}/rollouts", json=body, timeout=120)
    if answer.status_code != 201:
        raise DevstackError(f"bench: POST /rollouts -> {answer.status_code}: {answer.text[:300]}")
    return answer.json()["id"], asked


def healthy(api: str, rows: Rows, ids: list[str], rate: int, budget_s: float) -> dict[str, Any]:
    """The healthy rollout, to its end or for `budget_s` (then cancelled, reported as far as it
    got: the pipeline, not the pacing, bounds it on a busy machine)."""
    rollout_id, asked = create(api, {
        "firmware_version": FIRMWARE, "devices": ids, "waves": HEALTHY_WAVES,
        "max_per_minute": rate, "abort": {"failure_percent": 50, "min_finished": 10}})  # fmt: skip
    deadline = time.monotonic() + budget_s
    while (status := rows.rollout(rollout_id)) is None or status[0] == "running":
        if time.monotonic() > deadline:
            requests.post(f"{api}/rollouts/{rollout_id}/cancel", timeout=120,
                          headers={"If-Match": str(status[1] if status else 0)})  # fmt: skip
            status = rows.rollout(rollout_id)
            break
        time.sleep(1.0)
    assert status is not None
    finals = rows.finals(rollout_id)
    done = [at for s, at in finals if s == "done"]
    return {
        "id": rollout_id, "asked_at": asked, "status": status[0], "done": len(done),
        "last_done_s": round(max(done) - asked, 1) if done else None,
        "rollout_done_s": round(status[2] - asked, 1) if status[0] == "done" else None,
        "ideal_s": round(len(ids) / (rate / 60), 1),
        "released": rows.released(rollout_id, len(HEALTHY_WAVES) - 1),
    }  # fmt: skip


def abort(api: str, rows: Rows, ids: list[str], rate: int) -> dict[str, Any]:
    rollout_id, _asked = create(api, {
        "firmware_version": FIRMWARE, "devices": ids, "waves": [100],
        "max_per_minute": rate, "abort": ABORT})  # fmt: skip
    status = wait("the abort rollout paused",
                  lambda: (r := rows.rollout(rollout_id)) and r[0] != "running" and r,
                  120, interval=0.2)  # fmt: skip
    paused_at = rows.outbox_at(rollout_id, "rollout.paused")
    crossed_at, finished_then = crossing(rows.finals(rollout_id))
    # the jobs already with their devices end before the bench cancels (the rest never leave)
    wait("the abort rollout's dispatched jobs finished",
         lambda: rows.in_flight(rollout_id) == 0,
         120, interval=0.5)  # fmt: skip
    now = rows.rollout(rollout_id)
    assert now is not None
    requests.post(f"{api}/rollouts/{rollout_id}/cancel", headers={"If-Match": str(now[1])},
                  timeout=30)  # fmt: skip
    return {
        "id": rollout_id,
        "status": status[0],
        "finished_at_crossing": finished_then,
        "pause_s": round(paused_at - crossed_at, 3) if paused_at and crossed_at else None,
    }


def crossing(finals: list[tuple[str, float]]) -> tuple[float | None, int]:
    """When the abort rule first held (replaying the final statuses in write order), and how
    many jobs had finished by then."""
    counts: Counter[str] = Counter()
    for status, at in finals:
        counts[status] += 1
        if waves.Tally(len(finals), counts).aborts(ABORT["failure_percent"],
                                                   ABORT["min_finished"]):  # fmt: skip
            return at, counts.total()
    return None, counts.total()


def pacing(times: list[float], last_wave: list[float], rate: int) -> dict[str, Any]:
    """Commands at the devices: the last wave's rate once its bucket burst is spent, the most
    in any 60 s, and the biggest second."""
    ordered = sorted(times)
    most_60s = max(bisect_left(ordered, t + 60) - n for n, t in enumerate(ordered))
    per_second = Counter(math.floor(t) for t in ordered)
    wave = sorted(last_wave)
    steady = [t for t in wave if t >= wave[0] + waves.BURST_S]
    span = steady[-1] - steady[0] if len(steady) > 1 else 0.0
    return {
        "commands": len(ordered),
        "steady_per_s": round((len(steady) - 1) / span, 1) if span else None,
        "most_in_60s": most_60s,
        "most_in_1s": max(per_second.values()),
        "burst": round(waves.capacity(rate)),
    }


def profile_summary(files: list[Path], top: int = 6) -> list[tuple[str, float]]:
    """The innermost objectflow frame (functions/) of the sampled stacks, by share."""
    found: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            total += int(count)
            ours = [f for f in stack.split(";") if "functions/" in f and "runtime/adapter" not in f]
            found[ours[-1].split(" (")[0] if ours else "(outside functions/)"] += int(count)
    return [(frame, n / total) for frame, n in found.most_common(top)] if total else []


def run(
    console: Any,
    *,
    devices: int,
    max_per_minute: int,
    abort_devices: int,
    firmware_ms: float,
    budget_s: float,
    profile: bool,
    seconds: float,
    warmup: float,
) -> bool:
    from functions.ota.settings import DispatchSettings

    env = stack_env()
    console.print(f"rollouts bench: {devices} + {abort_devices} devices, max_per_minute "
                  f"{max_per_minute}; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)")  # fmt: skip
    _urls, runtime = runtime_up()
    values = load_values(ROOT / "bench" / "values-bench.yaml")
    pids = function_pids(runtime["broker"][0], values)
    if not all(pids.values()):
        raise DevstackError(f"bench: runtime processes not found: {pids}")
    api = f"http://127.0.0.1:{values.ports()['ota-api']}"
    answer = requests.put(f"{api}/firmwares/{FIRMWARE}", data=b"\x7fROLLOUT" * 512, timeout=30)
    if answer.status_code not in (200, 201):
        raise DevstackError(f"bench: ota-api refused the firmware: {answer.text}")
    rows = Rows(env["DATABASE_URL"])
    rows.clear()
    ids = rows.devices("ok", devices)
    abort_ids = rows.devices("abort", abort_devices)
    failing = frozenset(d for n, d in enumerate(abort_ids) if n % 5 < FAILING_SHARE * 5)
    behaviour = ota_sim.Behaviour(firmware_ms=firmware_ms, fail_devices=failing, seed=17)
    sim = Devices([*ids, *abort_ids], behaviour, status_prefix="")
    connect_s = sim.start()
    pids["simulator"] = [sim.pid]
    report: dict[str, Any] = {"devices": devices, "abort_devices": abort_devices,
                              "max_per_minute": max_per_minute, "connect_s": round(connect_s, 1),
                              "budget_s": budget_s,
                              "dispatch_rate": DispatchSettings().dispatch_rate,
                              "load_before": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    try:
        ideal = devices / (max_per_minute / 60)
        samplers = spy.record({k: pids[k] for k in PROFILED}, ideal, OUT, 2) if profile else []
        cpu = {part: cpu_seconds(p) for part, p in pids.items()}
        began = time.monotonic()
        report["healthy"] = healthy(api, rows, ids, max_per_minute, budget_s)
        wall = time.monotonic() - began
        report["cpu_pct"] = {part: round((cpu_seconds(p) - cpu[part]) / wall * 100)
                             for part, p in pids.items()}  # fmt: skip
        for sampler in samplers:
            sampler.wait()
        report["drain_s"] = drain(env, rows)
        report["abort"] = abort(api, rows, abort_ids, max_per_minute)
    finally:
        stats = sim.close()
        report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    # first arrival per device after the POST: a device's persistent MQTT session may hold a
    # command an earlier run's cancel left queued (its job deleted since)
    asked = report["healthy"]["asked_at"]
    arrived = {d: t for d, t in stats["command_times"].items() if t >= asked}
    last_wave = ids[waves.bounds(HEALTHY_WAVES, devices)[-2] :]
    report["pacing"] = pacing([arrived[d] for d in ids if d in arrived],
                              [arrived[d] for d in last_wave if d in arrived],
                              max_per_minute)  # fmt: skip
    report["link"] = stats["link"]
    if profile:
        report["profile"] = {
            part: profile_summary([OUT / f"profile-{part}-{pid}.txt" for pid in pids[part]])
            for part in PROFILED
        }
    rows.clear()
    (OUT / "rollouts.json").write_text(json.dumps(report, indent=2))
    plot([arrived[d] for d in ids if d in arrived], report, OUT / "rollouts.png")
    console.print(table(report))
    for part, frames in report.get("profile", {}).items():
        console.print(f"[bold]{part}[/bold] innermost objectflow frames (py-spy --gil): "
                      + "; ".join(f"{frame} {share:.0%}" for frame, share in frames))  # fmt: skip
    console.print("CPU % of one core during the healthy rollout: "
                  + ", ".join(f"{k} {v}" for k, v in report["cpu_pct"].items()))  # fmt: skip
    console.print(f"wrote {OUT / 'rollouts.json'}, {OUT / 'rollouts.png'}")
    # a rollout cut short by the budget is a finding, not a loss
    return report["healthy"]["status"] in ("done", "cancelled") and report["abort"]["status"] == (
        "paused"
    )


def table(report: dict[str, Any]) -> Table:
    h, a, p = report["healthy"], report["abort"], report["pacing"]
    rate = report["max_per_minute"]
    out = Table(title=f"rollouts: {report['devices']:,} simulated devices (waves "
                f"{HEALTHY_WAVES}) + {report['abort_devices']} (abort), max_per_minute {rate:,}; "
                f"load avg {report['load_before'][0]} -> {report['load_after'][0]} "
                "(2 shared cores)")  # fmt: skip
    for column in ("", "commands/s at the devices (last wave, after its burst)",
                   "most commands in any 60 s / 1 s", "POST -> last done (rollout done)",
                   "abort threshold crossed -> paused"):  # fmt: skip
        out.add_column(column)
    finished = f"{h['done']:,}/{report['devices']:,} done" + (
        ""
        if h["status"] == "done"
        else f", {h['status']} after the {report['budget_s']:g} s budget"
    )
    out.add_row(
        "this project",
        f"{p['steady_per_s']} (jobs released by ota-rollouts: {h['released']}/s)",
        f"{p['most_in_60s']:,} / {p['most_in_1s']}",
        f"{h['last_done_s']} s ({h['rollout_done_s']} s); {finished}",
        f"{a['pause_s']} s (at {a['finished_at_crossing']} finished jobs)",
    )  # fmt: skip
    out.add_row(
        "source document's design",
        f"no rollout; {DESIGN['messages_per_minute']:,}+ messages/min "
        f"(~{DESIGN['messages_per_minute'] / 60:.0f}/s) from {DESIGN['devices']}+ devices",
        f"commands to all {DESIGN['devices']} at once overloaded MQTT", "no figure",
        "no figure (no automatic stop)",
    )  # fmt: skip
    out.add_row(
        "limit", f"max_per_minute {rate / 60:g}/s (OTA_DISPATCH_RATE {report['dispatch_rate']}/s)",
        f"{rate:,} + burst {p['burst']:,} / {p['burst']:,}",
        f">= {h['ideal_s']} s at {rate / 60:g}/s (waves' gates add to it)",
        f"aim <= {AIM_PAUSE_S:g} s",
    )  # fmt: skip
    return out


def plot(times: list[float], report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    start = report["healthy"]["asked_at"]
    xs = np.sort(np.array(times)) - start
    figure, axis = pyplot.subplots(figsize=(8, 4))
    axis.plot(xs, np.arange(1, len(xs) + 1), label="commands arrived at the devices")
    rate = report["max_per_minute"] / 60
    axis.plot([xs[0], xs[0] + len(xs) / rate], [0, len(xs)], "--", color="grey",
              label=f"max_per_minute ({rate:g}/s) from the first command")  # fmt: skip
    axis.set_xlabel("seconds after POST /rollouts")
    axis.set_ylabel("devices with their command")
    axis.set_title(f"rollout over {report['devices']:,} simulated devices, waves {HEALTHY_WAVES}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)
