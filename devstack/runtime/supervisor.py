"""Run the whole diagram on one machine: the broker plus one process per function and source.

Every declared function runs as its own functions-framework server on its own port; the
dead-letter store, the MinIO webhook adapter, the MQTT bridge, the Kafka sources and the cron
ticker run as processes too, all pointed at the broker (`K_SINK`). A process that dies is
restarted with backoff. Output goes to `.devstack/logs/runtime/<name>.log`, and, in the
foreground (`make dev`), interleaved on the terminal with a coloured prefix per process.
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
from dataclasses import dataclass, field
from pathlib import Path

import requests
import tenacity
from rich.console import Console
from rich.markup import escape

from devstack import wiring
from devstack.config import HOST, PATHS, read_env_file
from devstack.errors import DevstackError
from devstack.runtime import knative
from devstack.runtime.broker import Broker, routes, serve
from devstack.services import ServiceSpec
from functions.sources.sink import DEAD_LETTER_ENV

log = logging.getLogger("objectflow.runtime")
ROOT = wiring.ROOT
LOGS = PATHS.state / "logs" / "runtime"
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


def _serve(name: str, served: wiring.Serve, port: int, env: dict[str, str]) -> Component:
    """functions-framework serving `served`; `kind: http` ones are ASGI apps (--asgi)."""
    command = [
        sys.executable, "-m", "functions_framework", "--source", str(ROOT / served.source),
        "--target", served.target, "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    if served.kind == "http":
        command.append("--asgi")
    return Component(name, command, {"K_SERVICE": name, **env}, port)


# The sink of last resort takes what a broker would not (the Kafka class stops at 1 MiB); the
# chart sets the same (templates/functions.yaml).
PLATFORM_ENV = {"dead-letter": {"OBJECTFLOW_MAX_EVENT_BYTES": str(16 * 1024 * 1024)}}


def components(values: wiring.Values, overlays: Sequence[Path] = ()) -> list[Component]:
    """Everything the runtime starts for this diagram, besides the broker itself."""
    sink = {"K_SINK": broker_url(values)}
    ports = values.ports()
    found = [
        _serve(name, function, ports[name], function.env)
        for name, function in values.functions.items()
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
            **sink,
            **({"OBJECTFLOW_MAX_EVENT_BYTES": str(limit)} if limit else {}),
            "OBJECTFLOW_MQTT_ROUTES": routes_json,
            "OBJECTFLOW_MQTT_CLIENT_ID": bridge.client_id,
        }
        found.append(
            Component("mqtt-bridge", [sys.executable, "-m", "functions.sources.mqtt_bridge"], env)
        )
    values_args = [arg for path in overlays for arg in ("--values", str(path))]
    for name in values.sources.kafka:
        command = [sys.executable, "-m", "devstack.runtime.kafka_source", name, *values_args]
        found.append(Component(f"kafka-source-{name}", command, sink))
    if values.schedules:
        command = [sys.executable, "-m", "devstack.runtime.ticker", *values_args]
        found.append(Component("cron-ticker", command, {"K_SINK": sink["K_SINK"]}))
    return found


def broker_url(values: wiring.Values) -> str:
    return f"http://{HOST}:{values.local.broker_port}/"


class Supervisor:
    def __init__(self, values: wiring.Values, overlays: Sequence[Path], foreground: bool) -> None:
        self.values = values
        self.components = components(values, overlays)
        self.console = Console(highlight=False) if foreground else None
        self.stopping = asyncio.Event()
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        # Functions read the stack's settings; the caller's environment wins.
        self.env = {**read_env_file(PATHS), **os.environ, "PYTHONUNBUFFERED": "1"}

    async def run(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        dead_letter = next((c.url for c in self.components if c.name == "dead-letter"), None)
        broker = Broker(routes(self.values), dead_letter, broker_class=self.values.broker.class_)
        runner = await serve(broker, self.values.local.broker_port)
        self._say(
            "broker", f"listening on {broker_url(self.values)} ({len(broker.table)} triggers)", 0
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

    async def _keep_running(self, component: Component, index: int) -> None:
        """Start `component`; when it exits, start it again after a growing pause."""
        pause = 0.5
        with (LOGS / f"{component.name}.log").open("ab") as log_file:
            while not self.stopping.is_set():
                started = time.monotonic()
                process = await asyncio.create_subprocess_exec(
                    *component.command,
                    cwd=ROOT,
                    env={**self.env, **component.env},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                self.processes[component.name] = process
                where = f" on {component.url}" if component.url else ""
                self._say(component.name, f"started (pid {process.pid}){where}", index)
                assert process.stdout is not None
                async for line in process.stdout:
                    log_file.write(line)
                    log_file.flush()
                    self._say(component.name, line.decode(errors="replace").rstrip(), index)
                code = await process.wait()
                if self.stopping.is_set():
                    return
                if time.monotonic() - started > 30:
                    pause = 0.5  # it ran for a while: this is a fresh failure
                self._say(component.name, f"exited with {code}; restarting in {pause:.1f}s", index)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
                pause = min(pause * 2, 30)

    async def _terminate(self) -> None:
        running = [p for p in self.processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), 10)
        except TimeoutError:
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    def _say(self, name: str, line: str, index: int) -> None:
        if self.console is not None:
            colour = COLOURS[index % len(COLOURS)]
            self.console.print(f"[{colour}]{name:>16} |[/] {escape(line)}", soft_wrap=True)
        else:
            log.info("%s | %s", name, line)


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
    """Block until every HTTP component answers GET /health (functions import slowly)."""
    urls = [c.url for c in components(values, overlays) if c.url]

    def all_healthy() -> bool:
        return all(_healthy(url) for url in urls)

    try:
        tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.2),
            retry=tenacity.retry_if_result(lambda ok: not ok),
        )(all_healthy)
    except tenacity.RetryError:
        down = [url for url in urls if not _healthy(url)]
        raise DevstackError(
            f"runtime: not healthy after {timeout:.0f}s: {', '.join(down)}; see {LOGS}/"
        ) from None


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}health", timeout=1).ok
    except requests.RequestException:
        return False


def run(overlays: Sequence[Path], foreground: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    values = wiring.load(*overlays)
    asyncio.run(Supervisor(values, overlays, foreground).run())
