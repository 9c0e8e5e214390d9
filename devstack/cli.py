"""`objectflow`: run the local service stack (install, start, provision, inspect, stop)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from devstack import dlq, kind, simulate, stack
from devstack.config import PATHS, ROOT, read_env_file
from devstack.demo import names as demo_names
from devstack.errors import DevstackError

app = typer.Typer(
    help="The local service stack: PostgreSQL, Redis, RabbitMQ, Mosquitto, Kafka, MinIO, FerretDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
app.add_typer(dlq.app, name="dlq")
app.add_typer(kind.app, name="kind")
app.add_typer(simulate.app, name="simulate")
# A domain's own commands: devstack/<domain>/cli.py with a typer `app`, as `objectflow <domain>`
# (found by convention, like the demos: a new domain adds its file, nothing here changes).
for _cli in sorted(Path(__file__).resolve().parent.glob("*/cli.py")):
    _domain = _cli.parent.name
    app.add_typer(importlib.import_module(f"devstack.{_domain}.cli").app, name=_domain)


VALUES_HELP = "Extra values files merged over charts/objectflow/values.yaml (like helm -f)."
Overlays = Annotated[list[Path] | None, typer.Option("--values", "-f", help=VALUES_HELP)]


@app.command()
def up(
    values: Overlays = None,
    runtime: bool = typer.Option(True, help="Also start the local runtime (broker + functions)."),
    monitoring: bool = typer.Option(
        False,
        "--monitoring",
        help="Also start Prometheus (Debian's), scraping the runtime with the alert rules loaded "
        "(as values' local.prometheus.enabled does); a running one is kept up to date anyway.",
    ),
) -> None:
    """Install what is missing, start every service on 127.0.0.1, provision, migrate, and
    start the local runtime: the broker and every function of the diagram; with --monitoring,
    Prometheus too (docs/operations.md, "Local Prometheus")."""
    seconds = stack.up(console, values or [], runtime=runtime, monitoring=monitoring)
    console.print(f"stack up in {seconds:.1f}s; settings in {PATHS.env_file}")


@app.command("runtime")
def runtime_command(values: Overlays = None) -> None:
    """Run the local runtime in this process (what `up` starts in the background)."""
    from devstack.runtime import supervisor

    supervisor.run(values or [], foreground=False)


@app.command()
def dev(values: Overlays = None) -> None:
    """Start the services, then run the runtime in the foreground with interleaved logs;
    Ctrl-C stops it."""
    from devstack.runtime import supervisor

    stack.up(console, values or [], runtime=False)
    stack.stop_runtime(lambda _step: None)  # frees the ports of a background one
    supervisor.run(values or [], foreground=True)


@app.command()
def down(
    runtime_only: bool = typer.Option(
        False, "--runtime-only", help="Stop only the local runtime; the services keep running."
    ),
) -> None:
    """Stop the processes `up` started (by pid file), gracefully, then by force."""
    stack.down(console, runtime_only=runtime_only)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """One row per service: up/down, port, pid, log file; then each function, and the local
    Prometheus's URL with its alerts."""
    rows = stack.status()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return
    table = Table("service", "state", "port", "pid", "log")
    for row in rows:
        state = f"[green]{row.state}" if row.state == "up" else f"[red]{row.state}"
        table.add_row(row.name, state, str(row.port), str(row.pid or "-"), row.log)
    console.print(table)
    functions = Table("function", "state", "port", "events", "errors")
    for fn in stack.function_status():
        state = f"[green]{fn.state}" if fn.state == "up" else f"[red]{fn.state}"
        functions.add_row(fn.name, state, str(fn.port), str(fn.events), str(fn.errors))
    console.print(functions)
    console.print(f"broker events pending: {stack.broker_pending()}")
    console.print(f"dead letters waiting: {stack.dead_letter_count()}")
    console.print(f"prometheus: {stack.prometheus_summary()}", highlight=False)


@app.command()
def clean() -> None:
    """Stop everything and delete .devstack/ (downloads and builds in ~/.cache stay)."""
    stack.down(console)
    shutil.rmtree(PATHS.state, ignore_errors=True)
    console.print(f"removed {PATHS.state}")


@app.command()
def check() -> None:
    """Connect to every service with the current environment (else .devstack/env values)."""
    from devstack.check import check as run_checks

    logging.disable(logging.CRITICAL)  # client libraries log retries; we print one line each
    results = run_checks()
    for service, outcome in results:
        colour = "green" if outcome == "ok" else "red"
        console.print(f"{service}: [{colour}]{escape(outcome)}[/]", highlight=False, soft_wrap=True)
    if any(outcome != "ok" for _, outcome in results):
        raise typer.Exit(1)


DEMO_ONLY_HELP = f"A demo to run (repeatable): {', '.join(demo_names())}; default all."


@app.command()
def demo(
    only: list[str] | None = typer.Option(
        None,
        "--only",
        metavar="NAME",
        help=DEMO_ONLY_HELP,
        show_default=False,
    ),
) -> None:
    """Run the functions against the running stack, printing each step (`make demo`). The demos
    are devstack/<domain>/demo.py, found by convention (devstack/demo.py)."""
    from devstack.demo import run

    if not run(read_env_file(PATHS), console, only):
        raise typer.Exit(1)


@app.command()
def tick(
    schedule: str = typer.Argument(help="A key of `schedules` in values.yaml."),
    values: Overlays = None,
) -> None:
    """Fire one cron tick now: with K_SINK set, the schedule's PingSource event goes there;
    else to each function the schedule triggers in the local runtime, printing its reply."""
    import os

    from devstack.runtime import ticker

    if os.environ.get("K_SINK"):
        typer.echo(ticker.fire_by_hand(schedule, values or [])["id"])
        return
    runs = ticker.run_by_hand(schedule, values or [])
    for run in runs:
        reply = f" {run.reply['type']} {json.dumps(run.reply.get_data())}" if run.reply else ""
        typer.echo(f"{run.function}: {run.status}{reply}")
    if not runs:
        typer.echo(f"no function is triggered by schedule {schedule!r}")
    else:
        typer.echo(runs[0].event_id)  # the tick's id, last, as with K_SINK
    if any(run.status >= 300 for run in runs):
        raise typer.Exit(1)


@app.command()
def chaos(
    only: list[str] | None = typer.Option(
        None,
        "--only",
        metavar="DOMAIN",
        help="Only this domain's tests (repeatable).",
        show_default=False,
    ),
) -> None:
    """Run the load and fault tests (pytest marker `chaos`) at full size against the running
    stack; `make test` runs each at a short size. `make chaos` brings the stack up first."""
    import os
    import subprocess
    import sys

    marker = "chaos" + (f" and ({' or '.join(only)})" if only else "")
    command = [sys.executable, "-m", "pytest", "tests", "-m", marker, "-v"]
    env = {**os.environ, "OBJECTFLOW_TEST_SCALE": "full"}
    raise typer.Exit(subprocess.run(command, cwd=ROOT, env=env, check=False).returncode)


@app.command()
def fuzz(
    examples: int = typer.Option(5_000, min=1, help="Examples per target."),
    only: str = typer.Option(
        None, "--only", help="Only targets whose test name contains this.", show_default=False
    ),
) -> None:
    """Fuzz the parsers of outside input (tests/fuzz: camera chunks, MinIO notifications,
    device statuses and heartbeats, Kafka records) with many more examples than `make test`
    runs. Needs no stack; a failure prints the smallest input that reproduces it."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "pytest", "tests/fuzz", "-v", "--hypothesis-show-statistics"]
    command += ["-k", only] if only else []
    env = {**os.environ, "OBJECTFLOW_FUZZ_EXAMPLES": str(examples)}
    raise typer.Exit(subprocess.run(command, cwd=ROOT, env=env, check=False).returncode)


@app.command()
def catalog(
    write: bool = typer.Option(False, help="Rewrite the table in functions/README.md."),
) -> None:
    """Print the function catalog table generated from values.yaml."""
    from devstack import wiring

    table = wiring.catalog_markdown(wiring.default())
    if not write:
        typer.echo(table)
        return
    readme = wiring.ROOT / "functions" / "README.md"
    text = readme.read_text()
    start, end = text.index(wiring.CATALOG_START), text.index(wiring.CATALOG_END)
    readme.write_text(text[:start] + table + text[end + len(wiring.CATALOG_END) :])


@app.command()
def traces(
    trace_id: str = typer.Argument(None, help="A trace id (a traceparent's 2nd field)."),
    last: int = typer.Option(10, help="Without a trace id: how many recent traces to list."),
) -> None:
    """Show the spans the local trace collector kept (values' local.tracing.enabled)."""
    from devstack.runtime import trace_collector

    found = trace_collector.by_trace(trace_collector.spans())
    if trace_id is not None:
        if trace_id not in found:
            raise DevstackError(f"no spans of trace {trace_id} in {trace_collector.SPANS}")
        typer.echo("\n".join(trace_collector.tree(found[trace_id])))
        return
    recent = sorted(found.items(), key=lambda item: min(s["start_ns"] for s in item[1]))[-last:]
    for trace, spans in recent:
        root = min(spans, key=lambda s: s["start_ns"])
        typer.echo(f"{trace}  {len(spans):4d} spans  {root['service']}: {root['name']}")


@app.command()
def schema() -> None:
    """Regenerate charts/objectflow/values.schema.json from the wiring model."""
    from devstack import wiring

    wiring.SCHEMA.write_text(json.dumps(wiring.json_schema(), indent=2) + "\n")
    console.print(f"wrote {wiring.SCHEMA}")


# Commands other packages plug in (pyproject.toml `objectflow.commands`, e.g. bench.cli:bench
# as `objectflow bench`); devstack never imports them by name.
for _command in entry_points(group="objectflow.commands"):
    app.command(name=_command.name)(_command.load())


def main() -> None:
    try:
        app()
    except DevstackError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":  # python -m devstack.cli, as tests/support.py runs it
    main()
