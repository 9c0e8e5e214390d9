"""Reading the runtime's trace collector in e2e tests (tests/e2e/*/test_tracing.py): the e2e
stack runs it (`local.tracing` in values-e2e.yaml) and every process exports its spans to it."""

from __future__ import annotations

from typing import Any

from devstack.runtime import trace_collector
from tests.support import wait_for


def trace_id(traceparent: str | None) -> str:
    assert traceparent is not None, "no traceparent carried"
    return traceparent.split("-")[1]


def spans_of(trace: str) -> list[dict[str, Any]]:
    return trace_collector.by_trace(trace_collector.spans()).get(trace, [])


def has(spans: list[dict[str, Any]], service: str, name: str, kind: str) -> bool:
    return any(
        s["service"] == service and s["name"].startswith(name) and s["kind"] == kind for s in spans
    )


def roots(spans: list[dict[str, Any]]) -> int:
    """How many spans have no parent in the trace (1: the trace is connected)."""
    ids = {s["span_id"] for s in spans}
    return sum(1 for s in spans if s["parent_id"] not in ids)


def wait_for_trace(trace: str, expected: list[tuple[str, str, str]], what: str) -> None:
    """Wait until `trace` holds a span of each (service, name prefix, kind) and is connected
    (every parent exported too: a parent span ends, and is exported, after its children)."""
    wait_for(
        lambda: (
            (found := spans_of(trace))
            and all(has(found, *step) for step in expected)
            and roots(found) == 1
        ),
        timeout=20,
        what=what,
    )
