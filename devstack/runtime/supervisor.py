"""Run the whole diagram on one machine: the broker plus one process per function and source.

Every declared function runs as its own functions-framework server on its own port; the
dead-letter store, the MinIO webhook adapter, the MQTT bridge, the Kafka sources, the MongoDB
outbox source, the outbox relays and the cron ticker run as processes too, the sources pointed at
the broker (`K_SINK`) or at the function they name. A process that dies is restarted with backoff.
Output goes to `.devstack/logs/runtime/<name>.log`, and, in the foreground (`make dev`),
interleaved on the terminal with a coloured prefix per process.

No child outlives the supervisor: each asks Linux for SIGTERM when its parent dies (however it
dies), and every child's pid is recorded in `.devstack/run/runtime-children.json`, so the next
start (or `objectflow down`) ends whatever is still left of an earlier run, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import psutil
import requests
import tenacity
import uvloop
from rich.console import Console
from rich.markup import escape

from devstack import process, wiring
from devstack.config import HOST, PATHS, read_env_file
from devstack.errors import DevstackError
from devstack.runtime import knative
from devstack.runtime.broker import Broker, routes, serve
from devstack.runtime.journal import Journal
from devstack.runtime.zygote import Child, Zygote, ZygoteGone
from devstack.services import ServiceSpec
from functions.runtime import tracing
from functions.sources.sink import DEAD_LETTER_ENV

log = logging.getLogger("objectflow.runtime")
ROOT = wiring.ROOT
LOGS = PATHS.state / "logs" / "runtime"
JOURNAL = PATHS.data("runtime") / "broker-journal.sqlite"
CHILDREN = PATHS.pid("runtime").with_name("runtime-children.json")
STARTED = "=== objectflow runtime started"  # opens each process's log section
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")


@dataclass(frozen=True)
class Component:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # HTTP port (functions and adapters)

    @property
    def url(self) -> str | None:
        return None if self.port is None else f"http://{HOST}:{self.port}/"

    @property
    def module_argv(self) -> list[str]:
        """`command` without `python -m`: what the zygote runs (every component is a module)."""
        assert self.command[:2] == [sys.executable, "-m"], self.command
        return self.command[2:]


def _serve(name: str, served: wiring.Serve, port: int, env: dict[str, str]) -> Component:
    """functions-framework serving `served`; `kind: http` ones are ASGI apps (--asgi)."""
    command = [
        sys.executable, "-m", "functions_framework", "--source", str(ROOT / served.source),
        "--target", served.target, "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    if served.kind == "http":
        command.append("--asgi")
    return Component(name, command, {"K_SERVICE": name, **env}, port)  # env may rename it


# The sink of last resort takes what a broker would not (the Kafka class stops at 1 MiB); the
# chart sets the same (templates/functions.yaml).
PLATFORM_ENV = {"dead-letter": {"OBJECTFLOW_MAX_EVENT_BYTES": str(16 * 1024 * 1024)}}


def components(values: wiring.Values, overlays: Sequence[Path] = ()) -> list[Component]:
    """Everything the runtime starts for this diagram, besides the broker itself."""
    sink = {"K_SINK": broker_url(values)}
    ports = values.ports()
    # A function with `scale` runs several processes: `<name>`, `<name>.2`, ... (K_SERVICE
    # is the function's name in each). Functions get K_SINK as in a cluster (the chart sets
    # it), so they can post events too.
    found = [
        _serve(process, function, port, {"K_SERVICE": name, **sink, **function.env})
        for name, function in values.functions.items()
        for process, port in zip(
            process_names(name, function), values.process_ports()[name], strict=True
        )
    ]
    # Platform components (dead-letter, minio-webhook) from `platform`; they may post events.
    found += [
        _serve(name, component, ports[name], {**sink, **PLATFORM_ENV.get(name, {})})
        for name, component in values.platform_components().items()
    ]
    # What the sink can never take goes to the dead-letter sink; the bridge also checks the
    # broker class's size limit itself (the Kafka broker answers 503 above it, like an outage).
    if values.platform.dead_letter is not None:
        sink[DEAD_LETTER_ENV] = f"http://{HOST}:{ports['dead-letter']}/"
    limit = knative.Rules(values.broker.class_).max_event_bytes
    bridge = values.sources.mqtt_bridge
    if bridge.routes:
        routes_json = json.dumps([r.model_dump(by_alias=True) for r in bridge.routes])
        env = {
            **direct_sink(values, bridge.sink, sink),
            **({"OBJECTFLOW_MAX_EVENT_BYTES": str(limit)} if limit else {}),
            "OBJECTFLOW_MQTT_ROUTES": routes_json,
            "OBJECTFLOW_MQTT_CLIENT_ID": bridge.client_id,
            "OBJECTFLOW_MQTT_LANES": str(bridge.lanes),
        }
        found.append(
            Component("mqtt-bridge", [sys.executable, "-m", "functions.sources.mqtt_bridge"], env)
        )
    outbox = values.sources.mongo_outbox
    if outbox is not None:
        found.append(
            Component(
                "mongo-outbox",
                [sys.executable, "-m", "functions.sources.mongo_outbox"],
                {"K_SINK": sink["K_SINK"], **outbox_env(outbox)},
            )
        )
    values_args = [arg for path in overlays for arg in ("--values", str(path))]
    for name, source in values.sources.kafka.items():
        command = [sys.executable, "-m", "devstack.runtime.kafka_source", name, *values_args]
        found.append(
            Component(f"kafka-source-{name}", command, direct_sink(values, source.sink, sink))
        )
    for name, relay in values.sources.outbox_relays.items():
        env = {"OBJECTFLOW_METRICS_PORT": str(relay.local_port)}
        found.append(Component(name, [sys.executable, "-m", relay.module], env))
    if values.schedules:
        command = [sys.executable, "-m", "devstack.runtime.ticker", *values_args]
        found.append(Component("cron-ticker", command, {"K_SINK": sink["K_SINK"]}))
    tracing = values.local.tracing
    if tracing.enabled:
        command = [sys.executable, "-m", "devstack.runtime.trace_collector",
                   "--port", str(tracing.port)]  # fmt: skip
        found.append(Component("trace-collector", command, {}, tracing.port))
    metrics = values.source_metrics_ports()
    return [
        replace(c, env={**c.env, "OBJECTFLOW_METRICS_PORT": str(metrics[c.name])})
        if c.name in metrics
        else c
        for c in found
    ]


def process_names(name: str, function: wiring.Function) -> list[str]:
    return [name] + [f"{name}.{n}" for n in range(2, function.scale.processes + 1)]


def direct_sink(
    values: wiring.Values, function: str | None, broker: dict[str, str]
) -> dict[str, str]:
    """K_SINK of a source: the function it names (its first process: scale-out across a
    function's processes happens behind the broker), else the broker."""
    if function is None:
        return broker
    return {"K_SINK": f"http://{HOST}:{values.ports()[function]}/"}


def outbox_env(outbox: wiring.MongoOutbox) -> dict[str, str]:
    """The mongo-outbox source's settings (the chart's template sets the same)."""
    return {
        "OBJECTFLOW_OUTBOX_COLLECTION": outbox.collection,
        "OBJECTFLOW_OUTBOX_TYPE": outbox.type,
        **outbox.env,
    }


def broker_url(values: wiring.Values) -> str:
    return f"http://{HOST}:{values.local.broker_port}/"


class Supervisor:
    def __init__(
        self, values: wiring.Values, overlays: Sequence[Path], foreground: bool, zygote: Zygote
    ) -> None:
        self.values = values
        self.components = components(values, overlays)
        self.console = Console(highlight=False) if foreground else None
        self.stopping = asyncio.Event()
        self.started: dict[str, Child] = {}
        self.children: dict[str, dict[str, float | int | None]] = {}
        self.env = {**children_env(), **values.local.tracing.env}
        self.zygote = zygote
        self.watchers: set[asyncio.Future[None]] = set()
        self.failed = False

    async def run(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        reap_leftovers()  # `objectflow up` did already; `make dev` and a bare `runtime` had not
        os.environ.update(self.values.local.tracing.env)
        tracing.configure("broker")  # the broker runs here
        self._watch_zygote()
        dead_letter = next((c.url for c in self.components if c.name == "dead-letter"), None)
        broker = Broker(
            routes(self.values),
            dead_letter,
            journal=Journal(JOURNAL),
            broker_class=self.values.broker.class_,
        )
        resumed = broker.resume()  # before the ingress opens: the oldest go first
        runner = await serve(broker, self.values.local.broker_port)
        self._say(
            "broker",
            f"listening on {broker_url(self.values)} ({len(broker.table)} triggers, "
            f"{resumed} events resumed from {JOURNAL.name})",
            0,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        keepers = [
            asyncio.create_task(self._keep_running(c, i + 1)) for i, c in enumerate(self.components)
        ]
        await self.stopping.wait()
        await self._terminate()
        for task in keepers:
            task.cancel()
        await runner.cleanup()
        CHILDREN.unlink(missing_ok=True)

    async def _keep_running(self, component: Component, index: int) -> None:
        """Start `component`; when it exits, start it again after a growing pause."""
        pause = 0.5
        with (LOGS / f"{component.name}.log").open("ab") as log_file:
            while not self.stopping.is_set():
                started = time.monotonic()
                log_file.write(f"\n{STARTED} {time.ctime()} by supervisor {os.getpid()}\n".encode())
                log_file.flush()
                # In the background the child writes its log itself: relaying every line
                # would cost the broker's event loop CPU per event a chatty function logs.
                relayed = self.console is not None
                read_end, write_end = os.pipe() if relayed else (None, log_file.fileno())
                try:
                    child = await self._spawn(component, write_end)
                except ZygoteGone:
                    return  # _spawn stopped the runtime
                finally:
                    if read_end is not None:
                        os.close(write_end)
                self.started[component.name] = child
                self._record(component.name, child.pid, component.port)
                where = f" on {component.url}" if component.url else ""
                self._say(component.name, f"started (pid {child.pid}){where}", index)
                if read_end is not None:
                    await self._relay(component.name, read_end, log_file, index)
                code = await child.wait()
                if self.stopping.is_set():
                    return
                if time.monotonic() - started > 30:
                    pause = 0.5  # it ran for a while: this is a fresh failure
                self._say(component.name, f"exited with {code}; restarting in {pause:.1f}s", index)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
                pause = min(pause * 2, 30)

    async def _spawn(self, component: Component, output: int) -> Child:
        """Fork `component` from the zygote; if that has died, from a new one; if that one
        fails too, stop the runtime (it cannot start anything)."""
        env = {**self.env, **component.env, "OBJECTFLOW_COMPONENT": component.name}
        for attempt in (1, 2):
            if self.zygote.gone:
                self._say("zygote", "exited; starting another", 0)
                self.zygote = Zygote(self.env, ROOT)
                self._watch_zygote()
            try:
                return await asyncio.to_thread(
                    self.zygote.spawn, component.module_argv, env, ROOT, output, component.name
                )
            except ZygoteGone as exc:
                self.zygote.gone = True
                if attempt == 2:
                    self._say("zygote", f"cannot start processes ({exc}); stopping", 0)
                    self.failed = True
                    self.stopping.set()
                    raise
        raise AssertionError("unreachable")

    def _watch_zygote(self) -> None:
        self.watchers.add(task := asyncio.ensure_future(self.zygote.watch()))
        task.add_done_callback(self.watchers.discard)
        # Recorded too: the next start reaps it (and what it forked) if it outlived us.
        self._record("zygote", self.zygote.process.pid, None)

    async def _relay(self, name: str, read_end: int, log_file: BinaryIO, index: int) -> None:
        """Copy a child's output to its log and the terminal, line by line, until it closes."""
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", 0)
        )
        try:
            async for line in reader:
                log_file.write(line)
                log_file.flush()
                self._say(name, line.decode(errors="replace").rstrip(), index)
        finally:
            transport.close()

    def _record(self, name: str, pid: int, port: int | None) -> None:
        """Note a started child (pid, start time, port) where the next start and `status`
        find it; written whole and renamed into place, so a reader never sees half of it."""
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(pid).create_time()
            self.children[name] = {"pid": pid, "created": created, "port": port}
        CHILDREN.parent.mkdir(parents=True, exist_ok=True)
        partial = CHILDREN.with_suffix(".tmp")
        partial.write_text(json.dumps(self.children, indent=2) + "\n")
        partial.replace(CHILDREN)

    async def _terminate(self) -> None:
        running = [child for child in self.started.values() if child.running]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(child.wait() for child in running)), 10)
        except TimeoutError:
            for child in running:
                if child.running:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
        self.zygote.close()

    def _say(self, name: str, line: str, index: int) -> None:
        if self.console is not None:
            colour = COLOURS[index % len(COLOURS)]
            self.console.print(f"[{colour}]{name:>16} |[/] {escape(line)}", soft_wrap=True)
        else:
            log.info("%s | %s", name, line)


def recorded_children() -> dict[str, dict[str, float | int | None]]:
    """The children the last supervisor started (name -> pid, created, port); {} if none."""
    try:
        found: dict[str, dict[str, float | int | None]] = json.loads(CHILDREN.read_text())
        return found
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def reap_leftovers() -> int:
    """End what is still running of an earlier run's children (by recorded pid and start
    time, never by name); return how many processes that was."""
    records = [(int(c["pid"] or 0), float(c["created"] or 0)) for c in recorded_children().values()]
    ended = process.reap(records)
    CHILDREN.unlink(missing_ok=True)
    return ended


def check_ports_free(values: wiring.Values, overlays: Sequence[Path]) -> None:
    """Refuse to start when a port of the runtime belongs to a process it did not start."""
    wanted = [("broker", values.local.broker_port)]
    wanted += [(c.name, c.port) for c in components(values, overlays) if c.port is not None]
    taken = [
        f"port {port} ({name}) is held by {holder}"
        for name, port in wanted
        if (holder := process.port_holder(port)) is not None
    ]
    if taken:
        raise DevstackError(
            "runtime: not starting, ports are in use by processes this checkout did not start:\n  "
            + "\n  ".join(taken)
            + "\nstop them, or move the runtime (local.broker-port, local-port in values)"
        )


def spec(overlays: Sequence[Path]) -> ServiceSpec:
    """The runtime as one more managed process of the stack (pid file, log, status, down)."""
    values = wiring.load(*overlays)
    values_args = [arg for path in overlays for arg in ("--values", str(Path(path).resolve()))]
    return ServiceSpec(
        name="runtime",
        port=values.local.broker_port,
        command=[sys.executable, "-m", "devstack.cli", "runtime", *values_args],
        needs=(),
        start_timeout=60,
    )


def wait_healthy(values: wiring.Values, overlays: Sequence[Path], timeout: float = 90) -> None:
    """Block until every HTTP component answers GET /health from the process this runtime
    started (functions import slowly)."""
    names = [c.name for c in components(values, overlays) if c.port is not None]
    seen_up: set[str] = set()  # a busy process (resumed backlog) may miss a later probe

    def states() -> dict[str, str]:
        records = recorded_children()
        return {name: health_state(name, records) for name in names if name not in seen_up}

    def all_healthy() -> bool:
        seen_up.update(n for n, s in states().items() if s in ("up", "up (pid not reported)"))
        return seen_up == set(names)

    try:
        tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.2),
            retry=tenacity.retry_if_result(lambda ok: not ok),
        )(all_healthy)
    except tenacity.RetryError:
        down = [f"{name}: {state}" for name, state in states().items() if state != "up"]
        raise DevstackError(
            f"runtime: not healthy after {timeout:.0f}s: {', '.join(down)}; see {LOGS}/"
        ) from None


def health_state(name: str, records: dict[str, dict[str, float | int | None]]) -> str:
    """`up` when GET /health of component `name` is answered by the process the runtime
    started for it (or a worker of it); else `down`, or who answers instead."""
    record = records.get(name)
    if record is None or record["port"] is None:
        return "down"
    try:
        answer = requests.get(f"http://{HOST}:{record['port']}/health", timeout=1)
        pid = answer.json().get("pid") if answer.ok else None
    except requests.RequestException:
        return "down"
    except ValueError:  # not JSON
        pid = None
    if not answer.ok:
        return f"unhealthy ({answer.status_code})"
    if pid is None:
        return "up (pid not reported)"
    ours = int(record["pid"] or 0)
    try:
        lineage = [pid, *(parent.pid for parent in psutil.Process(pid).parents())]
    except psutil.Error:
        lineage = [pid]
    return "up" if ours in lineage else f"stale (pid {pid} answers, not ours)"


def children_env() -> dict[str, str]:
    """What every child's environment starts from: the stack's settings, then the caller's."""
    return {**read_env_file(PATHS), **os.environ, "PYTHONUNBUFFERED": "1"}


def run(overlays: Sequence[Path], foreground: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # First, before the event loop exists: it preloads while the broker starts (one that
    # replaces it after a crash is started by exec too, so it never inherits the loop).
    zygote = Zygote(children_env(), ROOT)
    values = wiring.load(*overlays)
    # uvloop: the loop's own share of the broker's CPU fell to about a third (bench/README.md)
    supervisor = Supervisor(values, overlays, foreground, zygote)
    uvloop.run(supervisor.run())
    if supervisor.failed:
        raise SystemExit(1)
