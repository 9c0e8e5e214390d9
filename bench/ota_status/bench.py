"""`objectflow bench --only ota-status`: the device status path, pipeline vs the source
document's direct consumer, fed by the same simulated devices.

Both paths start at the device: `devices` simulated devices (devstack/ota/sim.py, one asyncio
process of their own, each its own MQTT session) get one command each (the dispatcher's command
JSON, a presigned link to a small firmware), published by the bench at `rate / 5` commands/s, so
`rate` statuses/s arrive (downloading at 0, 50 and 100 %, flashing, done: 5 per job, 3 of them
distinct). Each device downloads and verifies the firmware and reports over MQTT to
`bench/<path>/status/<id>/update`; the MQTT bridge (bench/values-bench.yaml routes) produces them
to a Kafka topic of the path's own, keyed by device id. Then:

1. pipeline: the runtime's Kafka source `bench-ota-status` (consumer group
   `bench-status-processor`) -> broker (ordered per device) -> `bench-ota-status`, a process of
   functions/ota/status.py:ota_status -> PostgreSQL;
2. direct (bench/ota_status/direct.py): one consumer process doing the same work one message
   at a time, committing each offset.

Latency is the device's `ts` (set as it queues the status for publishing) to the PostgreSQL
`now()` of the transaction that applied it (ota.device_statuses.reported_at -> received_at;
same machine, same clock), for every distinct status of the jobs after the warm-up. statuses/s
is every status record published (progress repeats included) over the first publish to the
last row applied. CPU is in % of one core over the same span. The jobs and devices are the
bench's own (`bench-ota-*`), removed at the end; their job.completed outbox rows do reach the
product's job.events through ota-outbox-relay (one per job, like any finished job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg2
import requests
from psycopg2.extras import Json, execute_values
from rich.table import Table

from bench.common import OUT, ROOT, cmdline, cpu_seconds, process_tree, runtime_up, stack_env
from bench.ota_status import direct
from bench.runtime import profile as spy
from devstack.api import DevstackError, load_values, ota_sim

PARTITIONS = 6  # as device.status (values.yaml)
TOPICS = {"pipeline": "bench.device.status", "direct": "bench.device.status.direct"}
DLQ_TOPIC = "bench.device.status.dlq"
FUNCTION = "bench-ota-status"  # bench/values-bench.yaml
STATUSES_PER_JOB = 5
DEVICE_PREFIX = "bench-ota"
FIRMWARE = "bench-ota-4k"  # kept in ota.firmwares and MinIO between runs, like the devices
DESIGN = {"statuses_per_s": 200.0, "p99_ms": 50.0}  # the source document's figure
AIM = {"statuses_per_s": 1000.0, "p99_ms": 50.0, "sim_core_pct": 100.0}


# --- the bench's own Kafka topics and rows ------------------------------------------------


def ensure_topics(env: dict[str, str]) -> bool:
    """The bench's topics with PARTITIONS each, made before the runtime starts (a consumer
    subscribing to a topic that does not exist yet would see it only at its next metadata
    refresh). True when a topic had fewer and was grown: the bench's Kafka source, auto-creating
    it with the broker's default when an earlier benchmark started the runtime, subscribed
    first, and must start again to see them."""
    from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        wanted = [*TOPICS.values(), DLQ_TOPIC]
        missing = set(wanted) - set(admin.list_topics())
        for topic in sorted(missing):
            with contextlib.suppress(TopicAlreadyExistsError):  # made meanwhile
                admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        short = {
            found["name"]: NewPartitions(PARTITIONS)
            for found in admin.describe_topics(wanted)
            if len(found["partitions"]) < PARTITIONS
        }
        if short:
            admin.create_partitions(short)
        return bool(short)
    finally:
        admin.close()


def wait_assigned(env: dict[str, str], group: str, timeout: float = 60) -> None:
    """Until `group`'s members hold all PARTITIONS: a Kafka source that subscribed while Kafka
    did not know the topic yet (restarted by someone's outage test) holds none for minutes."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = admin.describe_groups([group])[group]
            held = sum(len(topic["partitions"]) for member in found["members"]
                       for topic in (member["member_assignment"] or {}).get(
                           "assigned_partitions", []))  # fmt: skip
            if found["group_state"] == "Stable" and held == PARTITIONS:
                return
            if time.monotonic() > deadline:
                raise DevstackError(f"bench: consumer group {group} holds {held} of {PARTITIONS} "
                                    "partitions; restart the runtime and run again")  # fmt: skip
            time.sleep(0.5)
    finally:
        admin.close()


def wait_drained(env: dict[str, str], group: str, topic: str, timeout: float = 600) -> int:
    """Until `group` has committed everything `topic` holds (records a broken run left behind
    would otherwise be measured as this run's); the records it had left."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    consumer = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    deadline, first = time.monotonic() + timeout, None
    try:
        while True:
            committed = admin.list_group_offsets({group: None})[group]
            ends = consumer.end_offsets(partitions)
            left = sum(end - (committed[tp].offset if tp in committed else 0)
                       for tp, end in ends.items())  # fmt: skip
            first = left if first is None else first
            if left <= 0:
                return first
            if time.monotonic() > deadline:
                raise DevstackError(f"bench: {group} still has {left} records of {topic} to go")
            time.sleep(1)
    finally:
        consumer.close()
        admin.close()


class Rows:
    """The bench's devices (`bench-ota-NNNNN`, kept, so their MQTT sessions are reused) and
    jobs in the shared ota schema."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.dsn = env["DATABASE_URL"]
        self.ids = [f"{DEVICE_PREFIX}-{n:05d}" for n in range(count)]

    def sql(self, query: str, params: Any = (), rows: list[tuple[Any, ...]] | None = None) -> Any:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            if rows is not None:
                execute_values(cur, query, rows, page_size=1000)
            else:
                cur.execute(query, params)
            found = cur.fetchall() if cur.description else []
        conn.close()
        return found

    def prepare(self) -> None:
        self.clear()
        self.sql("INSERT INTO ota.devices (device_id, model, timezone) VALUES %s "
                 "ON CONFLICT (device_id) DO NOTHING",
                 rows=[(d, "bench", "UTC") for d in self.ids])  # fmt: skip

    def dispatched_jobs(self, firmware: str) -> dict[str, tuple[str, str]]:
        """device id -> (job id, command message id) of one job per device, dispatched."""
        now = datetime.now(UTC)
        made = {d: (str(uuid.uuid4()), str(uuid.uuid4())) for d in self.ids}
        schedule = Json({"kind": "now", "due_at": now.isoformat()})
        self.sql(
            "INSERT INTO ota.jobs (id, device_id, firmware_version, schedule, due_at, status, "
            "version, message_id, deadline_at) VALUES %s",
            rows=[(job, d, firmware, schedule, now, "dispatched", 2, message,
                   now + timedelta(hours=1)) for d, (job, message) in made.items()],
        )  # fmt: skip
        return made

    def done(self, job_ids: list[str]) -> int:
        [(count,)] = self.sql("SELECT count(*) FROM ota.jobs WHERE id = ANY(%s::uuid[]) "
                              "AND status = 'done'", (job_ids,))  # fmt: skip
        return int(count)

    def applied(self, job_ids: list[str]) -> list[tuple[str, float, float]]:
        """(status, device ts, applied at) of every distinct status of the jobs."""
        return self.sql(
            "SELECT status, extract(epoch FROM reported_at)::float8, "
            "extract(epoch FROM received_at)::float8 "
            "FROM ota.device_statuses WHERE job_id = ANY(%s::uuid[])",
            (job_ids,),
        )

    def clear(self) -> None:
        """The bench devices' jobs (with their statuses and history) and outbox rows."""
        like = f"{DEVICE_PREFIX}-%"
        self.sql("DELETE FROM ota.jobs WHERE device_id LIKE %s", (like,))
        self.sql("DELETE FROM ota.event_outbox WHERE partition_key LIKE %s AND sent_at IS NOT "
                 "NULL", (like,))  # fmt: skip


# --- the simulated devices, in a process of their own -----------------------------------------


def simulate(ids: list[str], broker: Any, behaviour: ota_sim.Behaviour, shared: Any, stop: Any,
             out: Any) -> None:  # fmt: skip
    """The simulator's process: `shared` (connected, ...) is updated as it runs."""
    stats = ota_sim.Stats()

    def until() -> bool:
        shared[0] = stats.connected
        shared[1] = sum(stats.statuses.values())
        return bool(stop.is_set())

    asyncio.run(ota_sim.simulate(ids, broker, behaviour, stats, until=until))
    out.put({"statuses": dict(stats.statuses), "finished": len(stats.finished),
             "link": dict(stats.link), "command_times": stats.command_times})  # fmt: skip


class Devices:
    """The simulated devices in a process of their own; their statuses go to
    `<status_prefix>status/<id>/update` (bench/rollouts: the product's own topics)."""

    def __init__(self, ids: list[str], behaviour: ota_sim.Behaviour, status_prefix: str) -> None:
        context = multiprocessing.get_context("spawn")
        broker = ota_sim.stack_broker()
        broker = ota_sim.Broker(broker.host, broker.port, broker.username, broker.password,
                                status_prefix=status_prefix)  # fmt: skip
        self.shared = context.Array("l", 2)
        self.stop, self.out = context.Event(), context.Queue()
        self.process = context.Process(
            target=simulate, args=(ids, broker, behaviour, self.shared, self.stop, self.out)
        )
        self.count = len(ids)

    def start(self, timeout: float = 300) -> float:
        """Start and wait until every device is connected; the seconds that took."""
        began = time.monotonic()
        self.process.start()
        while self.shared[0] < self.count:
            if not self.process.is_alive() or time.monotonic() - began > timeout:
                raise DevstackError(f"bench: {self.shared[0]}/{self.count} devices connected")
            time.sleep(0.2)
        return time.monotonic() - began

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def close(self) -> dict[str, Any]:
        self.stop.set()
        stats = self.out.get(timeout=120)
        self.process.join(timeout=60)
        return dict(stats)


def command_payloads(
    made: dict[str, tuple[str, str]], firmware: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """(topic, payload) of each job's command, as ota-dispatcher builds it."""
    from functions.ota import command
    from functions.runtime import clients

    now = datetime.now(UTC).replace(microsecond=0)
    url = clients.s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": firmware["bucket"], "Key": firmware["key"]},
        ExpiresIn=3600,
    )  # fmt: skip
    return [
        (command.topic(device), command.Command(
            message_id=message, job_id=job, device_id=device, firmware_version=firmware["version"],
            url=url, sha256=firmware["sha256"], size=firmware["size"],
            signature=firmware.get("signature"), issued_at=now,
            expires_at=now + timedelta(hours=1)).payload())
        for device, (job, message) in made.items()
    ]  # fmt: skip


def publish(payloads: list[tuple[str, bytes]], rate: float) -> float:
    """Publish the commands at QoS 1 on a fixed schedule of `rate`/s; when the first went."""
    from functions.runtime import clients

    client = clients.mqtt.connect()
    sent = []
    start = time.time() + 0.5
    try:
        for n, (topic, payload) in enumerate(payloads):
            pause = start + n / rate - time.time()
            if pause > 0:
                time.sleep(pause)
            sent.append(client.publish(topic, payload, qos=1))
        for info in sent:
            info.wait_for_publish(timeout=60)
    finally:
        client.loop_stop()
        client.disconnect()
    return start


# --- one run per path ---------------------------------------------------------------------------


def runtime_pids(broker: int, values: Any) -> dict[str, list[int]]:
    """The processes of the pipeline: the function, its Kafka source, the bridge."""
    port = f"--port {values.function_ports()[FUNCTION]}"
    tree = [(pid, cmdline(pid)) for pid in process_tree(broker)[1:]]
    return {
        "ota-status": [pid for pid, line in tree if port in line],
        "kafka-source": [pid for pid, line in tree if f"kafka_source {FUNCTION}" in line],
        "bridge": [pid for pid, line in tree if "functions.sources.mqtt_bridge" in line],
        "broker": [broker],
    }


def measure(
    path: str,
    rows: Rows,
    firmware: dict[str, Any],
    *,
    rate: float,
    firmware_ms: float,
    warmup: float,
    measured: dict[str, list[int]],
    profiled: dict[str, list[int]] | None,
) -> dict[str, Any]:
    """One path: devices connected, commands out at rate / 5, wait for every job done."""
    made = rows.dispatched_jobs(firmware["version"])
    job_ids = [job for job, _message in made.values()]
    payloads = command_payloads(made, firmware)
    behaviour = ota_sim.Behaviour(firmware_ms=firmware_ms, seed=16)
    devices = Devices(rows.ids, behaviour, f"bench/{path}/")
    connect_s = devices.start()
    pids = {**measured, "simulator": [devices.pid]}
    spread = len(payloads) / (rate / STATUSES_PER_JOB)
    samplers = []
    if profiled:
        samplers = spy.record(profiled, max(1.0, spread - warmup), OUT, warmup + 0.5)
    cpu = {part: cpu_seconds(ids) for part, ids in pids.items()}
    load = os.getloadavg()
    began = time.monotonic()
    start = publish(payloads, rate / STATUSES_PER_JOB)
    timeout, last, seen = spread + 180, time.monotonic(), -1
    while (finished := rows.done(job_ids)) < len(job_ids):
        if finished != seen:
            seen, last = finished, time.monotonic()
        elif time.monotonic() - last > 60:  # no job finished for a minute: report what there is
            break
        if time.monotonic() - began > timeout:
            break
        time.sleep(0.5)
    wall = time.monotonic() - began
    cpu = {part: (cpu_seconds(ids) - cpu[part]) / wall * 100 for part, ids in pids.items()}
    stats = devices.close()
    for sampler in samplers:
        sampler.wait()
    applied = rows.applied(job_ids)
    published = sum(stats["statuses"].values())
    latencies = [(at - ts) * 1000 for _s, ts, at in applied if ts >= start + warmup]
    first = min((ts for _s, ts, _at in applied), default=start)
    last_applied = max((at for _s, _ts, at in applied), default=start)
    span = last_applied - first
    return {
        "jobs": len(job_ids),
        "done": finished,
        "published": published,
        "distinct": len(applied),
        "offered_per_s": rate,
        "statuses_per_s": round(published / span, 1) if span > 0 else 0.0,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "connect_s": round(connect_s, 1),
        "cpu_pct": {part: round(value) for part, value in cpu.items()},
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "link": stats["link"],
    }


def run(
    console: Any,
    *,
    devices: int,
    rate: float,
    firmware_ms: float,
    profile: bool,
    seconds: float,
    warmup: float,
) -> bool:
    env = stack_env()
    grown = ensure_topics(env)
    console.print(f"ota-status bench: {devices} devices, {rate:g} statuses/s offered "
                  f"({rate / STATUSES_PER_JOB:g} commands/s); load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)")  # fmt: skip
    _urls, runtime = runtime_up()
    values = load_values(ROOT / "bench" / "values-bench.yaml")
    pids = runtime_pids(runtime["broker"][0], values)
    group = values.sources.kafka[FUNCTION].consumer_group
    if grown:  # the supervisor starts it again, and it joins with every partition
        for pid in pids["kafka-source"]:
            os.kill(pid, signal.SIGTERM)
    wait_assigned(env, group)
    if left := wait_drained(env, group, TOPICS["pipeline"]):
        console.print(f"{group} first worked off {left} records an earlier run left")
    if not all(pids.values()):
        raise DevstackError(f"bench: runtime processes not found: {pids}")
    rows = Rows(env, devices)
    rows.prepare()
    api = f"http://127.0.0.1:{values.ports()['ota-api']}"
    version = FIRMWARE  # the same bytes every run: 200 once it exists
    answer = requests.put(f"{api}/firmwares/{version}", data=b"\x7fBENCH-OTA" * 400, timeout=30)
    if answer.status_code not in (200, 201):
        raise DevstackError(f"bench: ota-api refused the firmware: {answer.text}")
    firmware = answer.json() | {"version": version}
    firmware.setdefault("bucket", os.environ.get("MINIO_FIRMWARE_BUCKET", "firmware"))
    report: dict[str, Any] = {"devices": devices, "rate": rate}
    try:
        report["pipeline"] = measure(
            "pipeline", rows, firmware, rate=rate, firmware_ms=firmware_ms, warmup=warmup,
            measured=pids, profiled={k: pids[k] for k in ("ota-status", "kafka-source",
                                                           "bridge")} if profile else None,
        )  # fmt: skip
        rows.clear()
        context = multiprocessing.get_context("spawn")
        ready, stop, out = context.Event(), context.Event(), context.Queue()
        direct_group = f"bench-direct-{uuid.uuid4().hex[:8]}"
        consumer = context.Process(
            target=direct.run, args=(TOPICS["direct"], direct_group, ready, stop, out)
        )
        consumer.start()
        try:
            if not ready.wait(60):
                raise DevstackError("bench: the direct consumer did not join its group in 60 s")
            wait_assigned(env, direct_group)
            report["direct"] = measure(
                "direct", rows, firmware, rate=rate, firmware_ms=firmware_ms, warmup=warmup,
                measured={"consumer": [consumer.pid or 0], "bridge": pids["bridge"]},
                profiled=None,
            )  # fmt: skip
        finally:
            stop.set()
            report["direct"]["consumer"] = out.get(timeout=60) if "direct" in report else {}
            consumer.join(timeout=30)
    finally:
        rows.clear()
    (OUT / "ota-status.json").write_text(json.dumps(report, indent=2))
    console.print(table(report))
    if profile:
        for part in ("ota-status", "kafka-source", "bridge"):
            files = [OUT / f"profile-{part}-{pid}.txt" for pid in pids[part]]
            _shares, leaves = spy.summary(files, top=8)
            console.print(f"[bold]{part}[/bold] top frames (py-spy --gil): " + "; ".join(
                f"{leaf} {share:.0%}" for leaf, share in leaves[:8]))  # fmt: skip
    console.print(f"wrote {OUT / 'ota-status.json'}")
    return all(report[p]["done"] == report[p]["jobs"] for p in ("pipeline", "direct"))


def _met(ok: bool, detail: str) -> str:
    return "yes" if ok else f"no ({detail})"


def table(report: dict[str, Any]) -> Table:
    out = Table(title=f"ota-status: {report['devices']} simulated devices, "
                f"{report['rate']:g} statuses/s offered (2 shared cores)")  # fmt: skip
    for column in ("path", "statuses/s", "p50 ms", "p99 ms", "max ms", "jobs done",
                   "CPU % of a core", "load avg (1 min)", "aim", "met"):  # fmt: skip
        out.add_column(column)

    def row(name: str, key: str) -> None:
        r = report[key]
        cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_pct"].items() if k != "simulator")
        ok = (r["statuses_per_s"] >= AIM["statuses_per_s"] and r["p99_ms"] is not None
              and r["p99_ms"] <= AIM["p99_ms"])  # fmt: skip
        out.add_row(
            name, f"{r['statuses_per_s']:,}", f"{r['p50_ms']}", f"{r['p99_ms']}",
            f"{r['max_ms']}", f"{r['done']}/{r['jobs']}", cpu,
            f"{r['load_before'][0]} -> {r['load_after'][0]}",
            f">= {AIM['statuses_per_s']:g}/s, p99 <= {AIM['p99_ms']:g} ms",
            _met(ok, f"{r['statuses_per_s']:g}/s, p99 {r['p99_ms']} ms"),
        )  # fmt: skip

    row("pipeline: bridge -> Kafka -> source -> broker -> ota-status", "pipeline")
    row("direct: one consumer, one message at a time", "direct")
    out.add_row("design (source document)", f"{DESIGN['statuses_per_s']:g}",
                "", f"{DESIGN['p99_ms']:g}", "", "", "", "", "", "")  # fmt: skip
    for key in ("pipeline", "direct"):
        r = report[key]
        sim = r["cpu_pct"]["simulator"]
        out.add_row(
            f"simulator ({key} run): {report['devices']} devices, connected in "
            f"{r['connect_s']} s", "", "", "", "", "", f"simulator {sim}", "",
            f"<= {AIM['sim_core_pct']:g} % of one core", _met(sim <= AIM["sim_core_pct"],
                                                               f"{sim} %"),
        )  # fmt: skip
    return out
