"""Bring the whole stack up, down, or report on it; one progress row per service."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from devstack import install, process, prometheus, wiring
from devstack.config import HOST, PATHS, STACK
from devstack.errors import DevstackError
from devstack.services import ServiceSpec, specs

Step = Callable[[str], None]  # reports what a row is doing now


def progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("[bold]{task.fields[name]:<10}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )


def run_rows(console: Console, rows: dict[str, Callable[[Step], str]]) -> None:
    """Run each row's job (in parallel), showing its steps; raise all failures together."""
    errors: list[str] = []
    with progress(console) as bar:
        tasks = {name: bar.add_task("waiting", name=name, total=1) for name in rows}

        def job(name: str) -> None:
            task: TaskID = tasks[name]
            try:
                done = rows[name](lambda step: bar.update(task, description=step))
                bar.update(task, description=f"[green]✓ {done}", completed=1)
            except DevstackError as exc:
                errors.append(str(exc))
                bar.update(task, description="[red]✗ failed", completed=1)

        with ThreadPoolExecutor(max_workers=len(rows)) as pool:
            list(pool.map(job, rows))
    if errors:
        raise DevstackError("\n\n".join(errors))


def marker(spec: ServiceSpec) -> Path:
    return PATHS.data(spec.name) / ".provisioned"


def digest(spec: ServiceSpec) -> str:
    return hashlib.sha256(json.dumps(spec.provision_inputs, sort_keys=True).encode()).hexdigest()


def fingerprint_file(spec: ServiceSpec) -> Path:
    # Not `.fingerprint`: the runtime keeps its own there (runtime_fingerprint, code included).
    return PATHS.pid(spec.name).with_suffix(".started-from")


def fingerprint(spec: ServiceSpec) -> str:
    """What a service process is started from: its command and the environment it adds."""
    material = json.dumps([spec.command, spec.env], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def started_otherwise(spec: ServiceSpec, pid: int) -> bool:
    """Whether the running process `pid` was started from another command or environment than
    `spec` (e.g. FerretDB on SQLite before it moved to PostgreSQL). A process started before
    fingerprints were recorded is judged by its command line (a service that rewrites its
    process title, like Redis, is then restarted once)."""
    recorded = fingerprint_file(spec)
    if recorded.exists():
        return recorded.read_text() != fingerprint(spec)
    try:
        return psutil.Process(pid).cmdline() != spec.command
    except psutil.Error:
        return True


def bring_up(spec: ServiceSpec, step: Step) -> str:
    """Start `spec` unless ours already runs from the same command and environment (else restart
    it), then provision unless its data already has it."""
    pid = process.our_pid(spec)
    if pid is not None and started_otherwise(spec, pid):
        step("restarting: its command or environment changed")
        process.stop(spec)
        pid = None
    already = pid is not None and process.port_open(spec.port)
    if pid is None:
        if process.port_open(spec.port):
            raise DevstackError(
                f"{spec.name}: port {spec.port} is already in use by a process objectflow did "
                f"not start; stop it or free the port"
            )
        _, builds = install.missing(spec.needs)
        for build in builds:
            step(f"building {build.name} (cached afterwards)")
            build.install()
        PATHS.data(spec.name).mkdir(parents=True, exist_ok=True)
        if spec.prepare:
            step("preparing")
            try:
                spec.prepare()
            except DevstackError:
                raise
            except Exception as exc:  # e.g. FerretDB's PostgreSQL database could not be made
                raise DevstackError(f"{spec.name}: preparing failed: {exc!r}") from exc
        step("starting")
        pid = process.spawn(spec).pid
        fingerprint_file(spec).write_text(fingerprint(spec))
    if not already:
        step(f"waiting for port {spec.port}")
        process.wait_ready(spec, pid)
    if spec.provision and (not marker(spec).exists() or marker(spec).read_text() != digest(spec)):
        step("provisioning")
        try:
            spec.provision()
        except Exception as exc:  # client libraries raise their own types; name the service
            raise DevstackError(
                f"{spec.name}: provisioning failed: {exc!r}\n  log: {PATHS.log(spec.name)}"
            ) from exc
        marker(spec).write_text(digest(spec))
    return f"{'already up' if already else 'up'} on :{spec.port}, pid {pid}"


def migrate(step: Step) -> str:
    from functions.runtime.migrate import apply

    step("applying migrations")
    try:
        applied = apply(STACK.url("postgres"))
    except Exception as exc:  # yoyo and psycopg2 errors carry the failing statement
        raise DevstackError(f"migrations failed: {exc}") from exc
    return f"applied {', '.join(applied)}" if applied else "up to date"


def install_packages(packages: list[install.Apt], step: Step) -> str:
    names = " ".join(p.package for p in packages)
    step(f"apt-get install {names}")
    install.install_apt(packages)
    return f"installed {names}"


def start_runtime(overlays: Sequence[Path], step: Step) -> str:
    """Start the local runtime (restarting it if it runs other values), wait for its functions."""
    from devstack.runtime import supervisor

    spec = supervisor.spec(overlays)
    values = wiring.load(*overlays)
    recorded = PATHS.pid(spec.name).with_suffix(".fingerprint")
    wanted = runtime_fingerprint(spec, values)
    if process.our_pid(spec) is not None and (
        not recorded.exists() or recorded.read_text() != wanted
    ):
        step("restarting: values or code changed")
        process.stop(spec)
    if process.our_pid(spec) is None:
        # Children of a runtime that died without stopping them (SIGKILL), then anyone else's.
        if supervisor.reap_leftovers():
            step("stopped what an earlier run left behind")
        supervisor.check_ports_free(values, overlays)
    done = bring_up(spec, step)
    recorded.write_text(wanted)
    write_runtime_endpoints(values, overlays)
    step("waiting for every function's /health")
    supervisor.wait_healthy(values, overlays)
    return done


def write_runtime_endpoints(values: wiring.Values, overlays: Sequence[Path]) -> None:
    """Add the broker and every HTTP component of the runtime to .devstack/endpoints.json."""
    from devstack.runtime import supervisor

    endpoints = json.loads(PATHS.endpoints_file.read_text())
    endpoints["runtime"] = {
        "broker": supervisor.broker_url(values),
        "functions": {
            c.name: {"url": c.url, "log": str(supervisor.LOGS / f"{c.name}.log")}
            for c in supervisor.components(values, overlays)
            if c.url
        },
        "metrics": metrics_targets(values, overlays),
    }
    PATHS.endpoints_file.write_text(json.dumps(endpoints, indent=2) + "\n")


def metrics_targets(values: wiring.Values, overlays: Sequence[Path]) -> dict[str, dict[str, str]]:
    """Every process of the runtime that serves Prometheus metrics, with its kind (broker,
    function, source): the broker, each process of a function or platform component whose code
    is under functions/ (the frames serve /metrics; a test subscriber does not), and each
    source started with a metrics port."""
    from devstack.runtime import supervisor

    found = {"broker": {"url": f"{supervisor.broker_url(values)}metrics", "kind": "broker"}}
    product = {
        process: served
        for name, served in values.served().items()
        for process in (
            supervisor.process_names(name, served)
            if isinstance(served, wiring.Function)
            else [name]
        )
        if served.source.startswith("functions/")
    }
    for component in supervisor.components(values, overlays):
        port = component.env.get("OBJECTFLOW_METRICS_PORT")
        if component.name in product and component.url:
            found[component.name] = {"url": f"{component.url}metrics", "kind": "function"}
        elif port:
            found[component.name] = {"url": f"http://{HOST}:{port}/metrics", "kind": "source"}
    return found


def runtime_fingerprint(spec: ServiceSpec, values: wiring.Values) -> str:
    """What the running runtime was started from: command, merged values, Python sources.

    A different fingerprint means `up` restarts the runtime, so an edited values.yaml or
    function is picked up (`make dev` is the faster loop for code).
    """
    files = {
        *(wiring.ROOT / "functions").rglob("*.py"),
        *(wiring.ROOT / "devstack").rglob("*.py"),
        *(wiring.ROOT / fn.source for fn in values.functions.values()),
    }
    sources = sorted(f"{path}:{path.stat().st_mtime_ns}" for path in files if path.exists())
    material = [shlex.join(spec.command), values.model_dump_json(), *sources]
    return hashlib.sha256("\n".join(material).encode()).hexdigest()


def up(
    console: Console, overlays: Sequence[Path] = (), runtime: bool = True, monitoring: bool = False
) -> float:
    """Install, start, provision, migrate, then start the runtime, and Prometheus when asked
    (`monitoring`, `local.prometheus.enabled`) or already running; return the seconds it took."""
    started = time.monotonic()
    # Buckets, topics and collections: what the domains (and Kafka sources) of these values need.
    values = wiring.load(*overlays)
    infrastructure = values.infrastructure()
    services = specs(infrastructure=infrastructure)
    prometheus_spec = monitoring_spec(values)
    # A running Prometheus gets the new config too: the runtime's ports may have changed.
    monitoring = monitoring or values.local.prometheus.enabled or process.is_up(prometheus_spec)
    STACK.write_files(PATHS, infrastructure)
    # Debian packages first and in one apt run; Go and Maven builds happen per service, so
    # services that need no build start meanwhile.
    needs = [need for spec in services.values() for need in spec.needs]
    apt, _ = install.missing(needs + (list(prometheus_spec.needs) if monitoring else []))
    if apt:
        run_rows(console, {"apt": partial(install_packages, apt)})
    run_rows(console, {name: partial(bring_up, spec) for name, spec in services.items()})
    run_rows(console, {"migrations": migrate})
    if runtime:
        run_rows(console, {"runtime": partial(start_runtime, overlays)})
    if monitoring:
        run_rows(console, {"prometheus": partial(start_prometheus, values)})
    return time.monotonic() - started


def monitoring_spec(values: wiring.Values | None = None) -> ServiceSpec:
    return prometheus.spec((values or wiring.default()).local.prometheus)


def start_prometheus(values: wiring.Values, step: Step) -> str:
    """Write the scrape config from endpoints.json; start Prometheus, or have a running one
    reload the config if it changed."""
    settings = values.local.prometheus
    spec = monitoring_spec(values)
    step("writing the scrape config")
    changed = prometheus.write_config(settings)
    pid = process.our_pid(spec)
    if pid is not None and changed and not started_otherwise(spec, pid):
        step("reloading its config")
        prometheus.reload(spec, pid)
    done = bring_up(spec, step)
    prometheus.write_endpoint(settings)
    return f"{done}; {prometheus.url(settings)}"


def stop(spec: ServiceSpec, step: Step) -> str:
    step("stopping")
    return "stopped" if process.stop(spec) else "was not running"


def stop_runtime(step: Step) -> str:
    """Stop the runtime, then whatever of its children outlived it (by recorded pid)."""
    from devstack.runtime import supervisor

    done = stop(runtime_spec(), step)
    left = supervisor.reap_leftovers()
    return f"{done}; ended {left} leftover processes" if left else done


def down(console: Console, runtime_only: bool = False) -> None:
    """Stop the runtime first (its functions use the services), then every service."""
    run_rows(console, {"runtime": stop_runtime})
    if not runtime_only:
        stopping = {**specs(), "prometheus": monitoring_spec()}
        run_rows(console, {name: partial(stop, spec) for name, spec in stopping.items()})


def runtime_spec() -> ServiceSpec:
    from devstack.runtime import supervisor

    return supervisor.spec(())


@dataclass(frozen=True)
class Status:
    name: str
    state: str
    port: int
    pid: int | None
    log: str


def status() -> list[Status]:
    return [
        Status(
            name=spec.name,
            state="up" if process.is_up(spec) else "down",
            port=spec.port,
            pid=process.our_pid(spec),
            log=str(PATHS.log(spec.name)),
        )
        for spec in [*specs().values(), runtime_spec(), monitoring_spec()]
    ]


@dataclass(frozen=True)
class FunctionStatus:
    name: str
    state: str
    port: int
    events: int
    errors: int


def function_status() -> list[FunctionStatus]:
    """Each HTTP process the runtime started: up (answered by that very process) or not, and
    its event counters (from /metrics)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from devstack.runtime.supervisor import components, health_state, recorded_children

    records = recorded_children()
    # What runs (it may run overlays), else what values.yaml declares, shown down.
    ports = {c.name: c.port for c in components(wiring.default()) if c.port is not None}
    ports |= {name: record["port"] for name, record in records.items()}
    found = []
    for name, port in ports.items():
        if port is None:
            continue
        state = health_state(name, records)
        events = errors = 0
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        except requests.RequestException:
            answer = None
        # Only Prometheus text counts: a test subscriber answers every GET with its JSON health.
        if answer is not None and answer.headers.get("content-type", "").startswith("text/plain"):
            for family in text_string_to_metric_families(answer.text):
                for sample in family.samples:
                    if sample.name == "objectflow_events_total":
                        events += int(sample.value)
                    elif sample.name == "objectflow_errors_total":
                        errors += int(sample.value)
        found.append(FunctionStatus(name, state, int(port), events, errors))
    return found


def broker_pending() -> str:
    """Events the local broker accepted and has not finished delivering (from its journal)."""
    from devstack.runtime.journal import count_pending
    from devstack.runtime.supervisor import JOURNAL

    try:
        pending = count_pending(JOURNAL)
    except Exception as exc:  # status must print whatever state the file is in
        return f"unknown ({type(exc).__name__})"
    return "0 (no journal yet)" if pending is None else str(pending)


def dead_letter_count() -> str:
    """Dead letters not yet re-driven, or why it is unknown."""
    from devstack.dlq import with_stack_settings
    from functions.deadletter import store

    try:
        with with_stack_settings():
            return str(store.count_pending())
    except Exception as exc:  # status must print even when PostgreSQL is down
        return f"unknown ({type(exc).__name__})"


def prometheus_summary() -> str:
    return prometheus.alerts_summary(wiring.default().local.prometheus)
