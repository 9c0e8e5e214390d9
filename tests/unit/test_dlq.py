"""`objectflow dlq list` output: a table that fits 80 columns, whole lines in a pipe."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from devstack import dlq

ROW: dict[str, Any] = {
    "id": 4242,
    "dead_lettered_at": datetime(2026, 12, 1, 8, 30, tzinfo=UTC),
    "trigger_name": "camera-chunk-received",
    "event_type": "objectflow.camera.chunk.received.v1",
    "event_id": "0123456789abcdef0123456789abcdef",
    "status_code": 422,
    "attempts": 1,
    "response_body": '{"error": "invalid-data", "detail": "data: is empty: a chunk carries\\n'
    'at least one byte", "field": "data"}',
}


def test_pipe_lines_carry_every_field_whole() -> None:
    [line] = [dlq._cells(ROW, full=True)]
    assert line == ["4242", "2026-12-01 08:30:00", "objectflow.camera.chunk.received.v1",
                    "camera-chunk-received", "0123456789abcdef0123456789abcdef", "422", "1",
                    "data: is empty: a chunk carries at least one byte"]  # fmt: skip


def test_terminal_table_fits_80_columns(monkeypatch: Any) -> None:
    out = io.StringIO()
    monkeypatch.setattr(dlq, "console", Console(file=out, width=80, force_terminal=True))
    monkeypatch.setattr("functions.deadletter.store.pending", lambda limit: [ROW, ROW])
    monkeypatch.setattr(dlq, "with_stack_settings", _nothing)
    dlq.list_(limit=2)
    lines = out.getvalue().splitlines()
    assert all(len(_plain(line)) <= 80 for line in lines), lines
    assert sum("4242" in line and "422" in line for line in lines) == 2  # one line per letter


def _plain(line: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", line)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None
