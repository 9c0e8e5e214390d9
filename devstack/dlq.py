"""`objectflow dlq`: list, show, re-drive and purge dead-lettered events."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import requests
import typer
from rich.console import Console
from rich.table import Table

from devstack import wiring
from devstack.config import PATHS, read_env_file

app = typer.Typer(help="Dead-lettered events: list, show, redrive, purge.", no_args_is_help=True)
console = Console()


@contextlib.contextmanager
def with_stack_settings() -> Iterator[None]:
    """Use .devstack/env for settings the caller's environment does not set."""
    from functions.runtime import clients, settings

    saved = dict(os.environ)
    for key, value in read_env_file(PATHS).items():
        os.environ.setdefault(key, value)
    settings.reset()
    clients.reset()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@app.command("list")
def list_(limit: int = typer.Option(50, help="How many, newest first.")) -> None:
    """Dead letters not yet re-driven: a table on a terminal, tab-separated lines in a pipe."""
    from functions.deadletter import store

    with with_stack_settings():
        rows = store.pending(limit)
    if not console.is_terminal:  # one whole line per letter, for grep, cut and awk
        for row in rows:
            typer.echo("\t".join(_cells(row, full=True)))
        return
    cells = [_cells(row, full=False) for row in rows]
    widths = {"id": max([2, *(len(c[0]) for c in cells)]), "when": 11, "type": 26, "status": 6,
              "tries": 5}  # fmt: skip
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    for name, width in widths.items():
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=width)
    # The answer gets what is left, shortened with …; `dlq show <id>` has it all.
    left = console.width - sum(widths.values()) - 2 * len(widths)
    table.add_column("answer", no_wrap=True, overflow="ellipsis", max_width=max(left, 10))
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(table)
    console.print(f"{len(rows)} dead letter(s); details: objectflow dlq show <id>")


def _cells(row: dict[str, Any], *, full: bool) -> list[str]:
    """id, when, type, status, attempts, answer (its `detail` when the answer is JSON) and, in
    full, the trigger and the event id."""
    answer = row["response_body"] or ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        answer = json.loads(answer).get("detail") or answer
    answer = " ".join(str(answer).split())  # one line, whatever the body held
    when = row["dead_lettered_at"].strftime("%Y-%m-%d %H:%M:%S" if full else "%m-%d %H:%M")
    cells = [str(row["id"]), when, row["event_type"], str(row["status_code"] or "none"),
             str(row["attempts"]), answer]  # fmt: skip
    if full:
        cells[3:3] = [row["trigger_name"] or "-", row["event_id"]]
    return cells


@app.command()
def show(letter_id: int) -> None:
    """Everything stored about one dead letter, as JSON."""
    console.print_json(json.dumps(_get(letter_id), default=str))


@app.command()
def redrive(
    letter_ids: list[int] = typer.Argument(None, help="Ids to re-drive (default: all pending)."),
) -> None:
    """Deliver dead letters again to their original destination (the function that failed; for
    a letter that named none, its trigger's subscriber, else the broker)."""
    from functions.deadletter import store

    with with_stack_settings():
        rows = [_get(i) for i in letter_ids] if letter_ids else store.pending(10_000)
        failures = 0
        for row in rows:
            status = _deliver(row)
            ok = 200 <= status < 300
            store.record_redrive(row["id"], status, ok)
            failures += not ok
            console.print(f"{row['id']}: {_destination(row)} answered {status or 'nothing'}")
    if failures:
        raise typer.Exit(1)


@app.command()
def purge(
    letter_ids: list[int] = typer.Argument(None, help="Ids to delete (default: re-driven ones)."),
) -> None:
    """Delete dead letters: the given ids, or all that were re-driven successfully."""
    from functions.deadletter import store

    with with_stack_settings():
        console.print(f"purged {store.purge(letter_ids or None)} dead letter(s)")


def _get(letter_id: int) -> dict[str, Any]:
    from functions.deadletter import store

    with with_stack_settings():
        row = store.get(letter_id)
    if row is None:
        console.print(f"no dead letter {letter_id}")
        raise typer.Exit(1)
    return row


def _destination(row: dict[str, Any]) -> str:
    """Where a letter goes back to. Knative's MT broker names no destination for timeouts and
    invalid replies: then the subscriber of its trigger as the running broker routes it, or the
    broker itself (every matching trigger gets the event again)."""
    if row["destination"]:
        return str(row["destination"])
    broker = f"http://127.0.0.1:{wiring.default().local.broker_port}/"
    with contextlib.suppress(requests.RequestException, ValueError, StopIteration):
        routes = requests.get(f"{broker}routes", timeout=5).json()
        return next(r["url"] for r in routes if r["trigger"] == row["trigger_name"])
    return broker


def _deliver(row: dict[str, Any]) -> int:
    """POST exactly the stored event (structured mode, so `data_base64` stays the body's bytes)
    to its destination; the HTTP status, 0 if there was no answer or nowhere to send it."""
    if not row["destination"].startswith(("http://", "https://")):
        return 0  # kept for inspection only (e.g. an unreadable MinIO notification)
    headers = {"Content-Type": "application/cloudevents+json"}
    body = json.dumps(row["cloudevent"]).encode()
    try:
        return requests.post(_destination(row), headers=headers, data=body, timeout=30).status_code
    except requests.RequestException:
        return 0
