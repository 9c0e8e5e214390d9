"""`objectflow bench` (a command plugged into the objectflow CLI through the
`objectflow.commands` entry point) and `python -m bench`: run the benchmarks bench.registry finds.

Imports stay light here: the objectflow CLI loads this module on every call.
"""

from __future__ import annotations

import sys

import typer

from bench import registry

BENCHES = registry.discover()
ONLY_HELP = f"A benchmark to run (repeatable): {', '.join(b.name for b in BENCHES)}; default all."


def bench(
    only: list[str] | None = typer.Option(
        None,
        "--only",
        metavar="NAME",
        help=ONLY_HELP,
        show_default=False,
    ),
    seconds: float = typer.Option(10.0, help="Measured seconds per rate and path."),
    warmup: float = typer.Option(2.0, help="Warm-up seconds before each measurement."),
    settings: list[str] | None = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="A benchmark's own setting (repeatable), e.g. --set cameras=30; listed above.",
        show_default=False,
    ),
) -> None:
    from rich.console import Console

    chosen = registry.select(only or [], BENCHES)
    per_bench = registry.parse_settings(settings or [], chosen)
    # A pipe, file or CI log is no terminal: rich would squeeze the tables to 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    ok = True
    for b in chosen:
        ok &= b.run(console, seconds=seconds, warmup=warmup, **per_bench[b.name])
    if not ok:
        raise typer.Exit(1)


bench.__doc__ = (
    "Benchmark the local runtime (bench/README.md). Brings the runtime up with "
    "bench/values-bench.yaml; prints tables, writes bench/out/.\n\n\b\n"
    + registry.help_text(BENCHES)
)


def main() -> None:
    """`python -m bench`: the same command on its own."""
    from devstack.api import DevstackError

    try:
        typer.run(bench)
    except DevstackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
