"""`objectflow bench --only outbox`: ota-outbox-relay vs the source document's worker vs the raw
producer, in one run, on a PostgreSQL database and Kafka topics of the bench's own.

Every path publishes the same records (the JSON of a `job.created` event, keyed by device id,
with the relay's CloudEvents headers) to a topic of its own created with
`message.timestamp.type=LogAppendTime`, so each record carries the instant the broker appended
it. Commit-to-ack is that instant minus the time the row's transaction commit returned to the
writer (same machine, same clock).

1. relay, drain: `python -m functions.ota.relay` (the real process: LISTEN/NOTIFY, up to 500
   rows a cycle, idempotent producer, acks=all) running against the bench database; `rows`
   outbox rows over `devices` devices are committed in one transaction. rows/s = rows / (last
   append - commit).
2. relay, open loop: `rate` jobs/s for `warmup` + `seconds`, one transaction per job with its
   outbox row (functions.ota.outbox.write), from `writers` processes on a fixed schedule;
   p50/p99 over the rows after the warm-up.
3. source design (bench/outbox/polling.py): the same backlog, drained for at most `drain_s`
   (it cannot finish it), as written (poll every second) and eager (poll again at once after
   a full batch).
4. limit: the relay's producer settings, `rows` records sent back to back and flushed
   (kafka-producer-perf-test style); send-to-ack per record from the send callbacks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg2
from psycopg2.extras import Json, execute_values
from rich.table import Table

from bench.common import OUT, ROOT, cpu_seconds, machine_cpu_seconds, stack_env
from bench.outbox import polling
from devstack.api import DevstackError
from functions.ota import outbox
from functions.ota.events import JobEvent, Schedule
from functions.ota.relay import headers, producer
from functions.runtime import migrate

PARTITIONS = 6  # as job.events (values.yaml)
SOURCE = "/objectflow/ota/bench"
AIM_VS_DESIGN = 10.0
AIM_VS_LIMIT = 0.5
AIM_P99_MS = 100.0
PROFILE = OUT / "outbox-relay-profile.txt"


def _payload(device: str) -> tuple[str, str, dict[str, Any]]:
    """(event id, job id, payload) of a job.created as ota-api writes it."""
    now = datetime.now(UTC)
    event = JobEvent(
        event_id=str(uuid.uuid4()),
        type="job.created",
        job_id=str(uuid.uuid4()),
        device_id=device,
        firmware_version="2.4.1",
        status="ready",
        version=1,
        schedule=Schedule(kind="now", due_at=now),
        occurred_at=now,
    )
    return event.event_id, event.job_id, event.model_dump(mode="json")


def _devices(run: str, count: int) -> list[str]:
    return [f"bench-{run}-{d:05d}" for d in range(count)]


class Stage:
    """The bench's own database and topics, removed by `close`."""

    def __init__(self, env: dict[str, str], run: str) -> None:
        self.env, self.run = env, run
        self.admin_dsn = env["DATABASE_URL"]
        self.database = f"bench_outbox_{run}"
        parts = urlsplit(self.admin_dsn)
        self.dsn = urlunsplit(parts._replace(path=f"/{self.database}"))
        self.topics: list[str] = []
        self.admin: Any = None

    def open(self) -> None:
        from kafka.admin import KafkaAdminClient

        self._admin_sql(f'CREATE DATABASE "{self.database}"')
        migrate.apply(self.dsn)
        self.admin = KafkaAdminClient(bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"])

    def topic(self, name: str) -> str:
        from kafka.admin import NewTopic

        topic = f"bench.outbox.{self.run}.{name}"
        config = {"message.timestamp.type": "LogAppendTime"}
        self.admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs=config)])
        self.topics.append(topic)
        return topic

    def connect(self) -> Any:
        return psycopg2.connect(self.dsn)

    def pending(self) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM ota.event_outbox WHERE sent_at IS NULL")
            (count,) = cur.fetchone()
        conn.close()
        return int(count)

    def sent_ids(self) -> set[str]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT event_id::text FROM ota.event_outbox WHERE sent_at IS NOT NULL")
            found = {event_id for (event_id,) in cur.fetchall()}
        conn.close()
        return found

    def clear(self) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM ota.event_outbox")
        conn.close()

    def close(self) -> None:
        try:
            if self.topics:
                self.admin.delete_topics(self.topics)
        finally:
            if self.admin is not None:
                self.admin.close()
            self._admin_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _admin_sql(self, statement: str) -> None:
        deadline = time.monotonic() + 60  # another engineer's outage test may have stopped it
        while True:
            try:
                conn = psycopg2.connect(self.admin_dsn, connect_timeout=3)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        conn.autocommit = True  # CREATE/DROP DATABASE run outside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()


def burst(stage: Stage, devices: list[str], rows: int) -> tuple[set[str], float]:
    """Commit `rows` outbox rows in one transaction; (their event ids, commit time)."""
    records, ids = [], set()
    for n in range(rows):
        device = devices[n % len(devices)]
        event_id, job_id, payload = _payload(device)
        ids.add(event_id)
        records.append((event_id, "job", job_id, device, "job.created", Json(payload)))
    conn = stage.connect()
    with conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO ota.event_outbox"
            " (event_id, aggregate_type, aggregate_id, partition_key, event_type, payload)"
            " VALUES %s",
            records,
            page_size=1000,
        )
    conn.commit()
    committed = time.time()
    conn.close()
    return ids, committed


def open_loop(
    stage: Stage, devices: list[str], rate: float, seconds: float, writers: int
) -> tuple[dict[str, float], float, float]:
    """One transaction per job (outbox.write) on a fixed schedule from `writers` processes (one
    Python process cannot build and commit 1,000 jobs/s next to its other work).

    Returns ({event id: commit time}, the schedule's start, p99 ms the writers ran late)."""
    total = int(rate * seconds)
    start = time.time() + 2.0  # forked and their payloads built by then
    commits: dict[str, float] = {}
    late: list[float] = []
    jobs = [(stage.dsn, devices, range(w, total, writers), start, rate) for w in range(writers)]
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("fork")) as pool:
        for mine, lateness in pool.map(_writer, *zip(*jobs, strict=True)):
            commits.update(mine)
            late.extend(lateness)
    return commits, start, float(np.percentile(late, 99)) * 1000 if late else 0.0


def _writer(
    dsn: str, devices: list[str], numbers: range, start: float, rate: float
) -> tuple[dict[str, float], list[float]]:
    """One open-loop writer: job n commits at start + n / rate (or as soon after as it can).
    The payloads are built beforehand, so the load costs the machine only its transactions."""
    conn = psycopg2.connect(dsn)
    commits: dict[str, float] = {}
    lateness = []
    jobs = [(n, devices[n % len(devices)], *_payload(devices[n % len(devices)])) for n in numbers]
    with conn.cursor() as cur:
        for n, device, event_id, job_id, payload in jobs:
            due = start + n / rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            lateness.append(max(0.0, time.time() - due))
            outbox.write(
                cur,
                event_id=uuid.UUID(event_id),
                aggregate_id=job_id,
                partition_key=device,
                event_type="job.created",
                payload=payload,
            )
            conn.commit()
            commits[event_id] = time.time()
    conn.close()
    return commits, lateness


def appended(env: dict[str, str], topic: str, want: set[str], timeout: float) -> dict[str, Any]:
    """Read `topic` from the start: {event id: first append time}, and the duplicate count."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        enable_auto_commit=False,
        group_id=None,
        max_poll_records=5000,
    )
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    found: dict[str, float] = {}
    duplicates = 0
    deadline = time.monotonic() + timeout
    try:
        while want - found.keys() and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.timestamp_type != 1:
                        raise DevstackError(f"bench: {topic} is not a LogAppendTime topic")
                    event_id = dict(record.headers)["ce_id"].decode()
                    if event_id in found:
                        duplicates += 1
                    else:
                        found[event_id] = record.timestamp / 1000
    finally:
        consumer.close()
    return {"appended": found, "duplicates": duplicates}


def figures(
    commits: dict[str, float],
    acks: dict[str, float],
    began: float,
    busy: tuple[float, float],
    cpu_s: float,
) -> dict[str, Any]:
    """rows/s from the first commit to the last ack, p50/p99 commit-to-ack, CPU: the machine's
    and the publishing process's per acknowledged row (`cpu_s` over the measurement)."""
    mine = [acks[i] for i in commits if i in acks]  # `acks` may hold other phases' rows too
    latencies = [(acks[i] - commits[i]) * 1000 for i in commits if i in acks]
    span = max(mine, default=began) - began
    return {
        "rows": len(commits),
        "acked": len(latencies),
        "unacked": len(commits) - len(latencies),
        "rows_per_s": round(len(latencies) / span, 1) if span > 0 else 0.0,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "machine_cpu_pct": round(100 * busy[0] / max(busy[1], 1e-9)),
        "cpu_ms_per_row": round(1000 * cpu_s / len(latencies), 3) if latencies else None,
    }


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DevstackError(f"bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


class Busy:
    """Machine busy CPU seconds and wall seconds over a `with` block."""

    def __enter__(self) -> Busy:
        self.cpu, self.wall = machine_cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.figures = (machine_cpu_seconds() - self.cpu, time.monotonic() - self.wall)


def start_relay(stage: Stage, topic: str, profile: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **stage.env,
        "DATABASE_URL": stage.dsn,
        "OTA_JOB_TOPIC": topic,
        "OTA_DLQ_TOPIC": f"{topic}.dlq",
        "OTA_EVENT_SOURCE": SOURCE,
        "OBJECTFLOW_LOG_LEVEL": "WARNING",
    }
    env.pop("OBJECTFLOW_METRICS_PORT", None)
    command = [sys.executable, "-m", "functions.ota.relay"]
    if profile:
        command[1:1] = ["-m", "pyinstrument", "-r", "text", "-o", str(PROFILE)]
    log = open(OUT / "outbox-relay.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(
    console: Any,
    *,
    rows: int,
    rate: float,
    devices: int,
    drain_s: float,
    writers: int,
    profile: bool,
    seconds: float,
    warmup: float,
) -> bool:
    env = stack_env()  # also the in-process producer's settings
    run_id = uuid.uuid4().hex[:8]
    keys = _devices(run_id, devices)
    console.print(
        f"outbox bench {run_id}: {rows} rows per drain over {devices} devices, open loop at "
        f"{rate:g} jobs/s; database bench_outbox_{run_id}, topics bench.outbox.{run_id}.*"
    )
    stage = Stage(env, run_id)
    report: dict[str, Any] = {"run": run_id, "rows": rows, "rate": rate, "devices": devices}
    lost = 0
    try:
        stage.open()
        # 1-2: the relay, as a process of its own
        topic = stage.topic("relay")
        relay = start_relay(stage, topic, profile)
        try:
            ids, _ = burst(stage, keys, min(rows, 500))  # warm-up: connections, metadata
            wait_for(lambda: stage.pending() == 0, 60, "the relay's warm-up batch")
            warm = ids
            relay_cpu = cpu_seconds([relay.pid])
            with Busy() as busy:
                ids, committed = burst(stage, keys, rows)
                wait_for(lambda: stage.pending() == 0, 300, "the relay's drain")
            drain_cpu = cpu_seconds([relay.pid]) - relay_cpu
            relay_cpu = cpu_seconds([relay.pid])
            with Busy() as busy_open:
                commits, start, late_ms = open_loop(stage, keys, rate, warmup + seconds, writers)
                wait_for(lambda: stage.pending() == 0, 300, "the relay's open-loop rows")
            open_cpu = cpu_seconds([relay.pid]) - relay_cpu
        finally:
            stop(relay)
        got = appended(env, topic, warm | ids | set(commits), 180)
        acks = got["appended"]
        missing = (warm | ids | set(commits)) - acks.keys()
        lost += len(missing)
        report["relay"] = figures(
            dict.fromkeys(ids, committed), acks, committed, busy.figures, drain_cpu
        ) | {"duplicates": got["duplicates"], "lost": sorted(missing)[:20]}
        measured = {i: t for i, t in commits.items() if t >= start + warmup}
        # the relay's CPU over the whole open loop, shared out over the rows measured
        open_cpu *= len(measured) / max(len(commits), 1)
        report["open_loop"] = figures(
            measured, acks, start + warmup, busy_open.figures, open_cpu
        ) | {
            "offered_per_s": rate,
            "committed_per_s": round(len(commits) / (max(commits.values()) - start), 1),
            "writer_late_p99_ms": round(late_ms, 1),
        }
        stage.clear()

        # 3: the source document's worker, as written and eager
        kafka = producer()
        for name, eager in (("design", False), ("design_eager", True)):
            topic = stage.topic(name)
            ids, committed = burst(stage, keys, rows)
            halt = threading.Event()
            worker = threading.Thread(
                target=polling.run, args=(stage.dsn, kafka, topic, SOURCE, halt, eager)
            )
            own_cpu = cpu_seconds([os.getpid()])
            with Busy() as busy:
                worker.start()
                halt.wait(drain_s)
                halt.set()
                worker.join()
            own_cpu = cpu_seconds([os.getpid()]) - own_cpu
            sent = stage.sent_ids()
            got = appended(env, topic, sent, 180)
            missing = sent - got["appended"].keys()
            lost += len(missing)
            report[name] = figures(
                dict.fromkeys(ids, committed), got["appended"], committed, busy.figures, own_cpu
            ) | {"duplicates": got["duplicates"], "drain_s": drain_s, "lost": sorted(missing)}
            stage.clear()

        # 4: the limit, the same records straight from a producer
        report["limit"] = raw_producer(kafka, stage.topic("limit"), keys, rows)
        kafka.close(timeout=10)
    finally:
        stage.close()
    aims(report)
    (OUT / "outbox.json").write_text(json.dumps(report, indent=2))
    plot(report, OUT / "outbox.png")
    console.print(table(report))
    if lost:
        console.print(f"[red]lost: {lost} rows marked sent never reached Kafka[/red]")
    console.print(f"wrote {OUT / 'outbox.json'}, {OUT / 'outbox.png'}")
    if profile:
        console.print(f"relay profile: {PROFILE}")
    return lost == 0


def raw_producer(kafka: Any, topic: str, devices: list[str], rows: int) -> dict[str, Any]:
    """kafka-producer-perf-test style: send everything, flush; rate from first send to last ack."""
    records = []
    for n in range(rows):
        event_id, job_id, payload = _payload(devices[n % len(devices)])
        row = outbox.Row(n, event_id, job_id, devices[n % len(devices)], "job.created",
                         payload, 0, datetime.now(UTC))  # fmt: skip
        records.append((row.partition_key.encode(), row.value(), headers(row, SOURCE)))
    latencies: list[float] = []
    last = [0.0]

    def acked(sent: float) -> Callable[[Any], None]:
        def callback(_metadata: Any) -> None:
            now = time.time()
            latencies.append((now - sent) * 1000)
            last[0] = max(last[0], now)

        return callback

    own_cpu = cpu_seconds([os.getpid()])
    with Busy() as busy:
        began = time.time()
        for key, value, record_headers in records:
            future = kafka.send(topic, key=key, value=value, headers=record_headers)
            future.add_callback(acked(time.time()))
        kafka.flush(timeout=120)
    own_cpu = cpu_seconds([os.getpid()]) - own_cpu
    return {
        "rows": rows,
        "acked": len(latencies),
        "unacked": rows - len(latencies),
        "record_bytes": len(records[0][1]),
        "rows_per_s": round(len(latencies) / (last[0] - began), 1) if latencies else 0.0,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "machine_cpu_pct": round(100 * busy.figures[0] / max(busy.figures[1], 1e-9)),
        "cpu_ms_per_row": round(1000 * own_cpu / len(latencies), 3) if latencies else None,
    }


def aims(report: dict[str, Any]) -> None:
    relay = report["relay"]["rows_per_s"]
    report["aims"] = {
        "vs_design": round(relay / max(report["design"]["rows_per_s"], 1e-9), 1),
        "vs_design_eager": round(relay / max(report["design_eager"]["rows_per_s"], 1e-9), 1),
        "vs_limit": round(relay / max(report["limit"]["rows_per_s"], 1e-9), 2),
        "open_loop_p99_ms": report["open_loop"]["p99_ms"],
    }


def _met(ok: bool, detail: str) -> str:
    return "yes" if ok else f"no ({detail})"


def table(report: dict[str, Any]) -> Table:
    a = report["aims"]
    out = Table(
        title=f"outbox: {report['rows']} rows per drain, {report['devices']} devices, "
        f"{report['limit']['record_bytes']} B records (2 shared cores)"
    )
    columns = ("path", "rows/s", "p50 ms", "p99 ms", "acked", "CPU ms/row", "machine CPU %")
    for column in (*columns, "aim", "met"):
        out.add_column(column)

    def row(name: str, key: str, aim: str, met: str) -> None:
        r = report[key]
        out.add_row(
            name,
            f"{r['rows_per_s']:,}",
            f"{r['p50_ms']}",
            f"{r['p99_ms']}",
            f"{r['acked']}/{r['rows']}",
            f"{r['cpu_ms_per_row']}",
            f"{r['machine_cpu_pct']}",
            aim,
            met,
        )

    row(
        "relay (NOTIFY, batches of 500)",
        "relay",
        f">= {AIM_VS_DESIGN:g}x design, >= {AIM_VS_LIMIT:.0%} limit",
        _met(a["vs_design"] >= AIM_VS_DESIGN and a["vs_limit"] >= AIM_VS_LIMIT,
             f"{a['vs_design']}x, {a['vs_limit']:.0%}"),
    )  # fmt: skip
    row(
        "design: poll 1 s, 10 a batch, flush per row",
        "design",
        "",
        f"relay {a['vs_design']}x",
    )
    row("design, polling again at once", "design_eager", "", f"relay {a['vs_design_eager']}x")
    row("limit: raw producer (send-to-ack)", "limit", "", f"relay {a['vs_limit']:.0%}")
    o = report["open_loop"]
    row(
        f"relay at {o['offered_per_s']:g} jobs/s offered ({o['committed_per_s']:g} committed, "
        f"writers p99 {o['writer_late_p99_ms']:g} ms late)",
        "open_loop",
        f"p99 <= {AIM_P99_MS:g} ms",
        _met(o["p99_ms"] is not None and o["p99_ms"] <= AIM_P99_MS, f"{o['p99_ms']} ms"),
    )
    return out


def plot(report: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["relay", "design", "design_eager", "limit"]
    labels = ["relay", "design\n(poll 1 s)", "design\n(eager)", "raw\nproducer"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = [report[n]["rows_per_s"] for n in names]
    left.bar(labels, rates, color=["tab:blue", "tab:gray", "tab:gray", "tab:green"])
    left.set_yscale("log")
    left.set_ylabel("rows/s, commit to ack (log)")
    left.axhline(AIM_VS_LIMIT * report["limit"]["rows_per_s"], color="tab:green", ls="--",
                 label=f"{AIM_VS_LIMIT:.0%} of the raw producer")  # fmt: skip
    left.axhline(AIM_VS_DESIGN * report["design"]["rows_per_s"], color="tab:gray", ls=":",
                 label=f"{AIM_VS_DESIGN:g}x the design")  # fmt: skip
    left.legend(fontsize=8)
    left.set_title(f"drain of {report['rows']} rows")
    keys = [*names, "open_loop"]
    xs = np.arange(len(keys))
    p50 = [report[k]["p50_ms"] or 0 for k in keys]
    p99 = [report[k]["p99_ms"] or 0 for k in keys]
    right.bar(xs - 0.2, p50, 0.4, label="p50")
    right.bar(xs + 0.2, p99, 0.4, label="p99")
    right.set_xticks(xs, [*labels, f"relay at\n{report['rate']:g}/s"])
    right.set_yscale("log")
    right.set_ylabel("commit to ack, ms (log)")
    right.axhline(AIM_P99_MS, color="tab:red", ls="--", label=f"aim p99 at {report['rate']:g}/s")
    right.legend(fontsize=8)
    right.set_title("latency")
    fig.suptitle(f"outbox bench {report['run']} (2 cores, shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
