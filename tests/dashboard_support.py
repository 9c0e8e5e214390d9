"""The Grafana dashboards of charts/objectflow/dashboards/: their PromQL expressions and the
metric names those name (parsed by promql-parser, Grafana's variables filled in first)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser

from devstack.config import ROOT

DASHBOARDS = ROOT / "charts" / "objectflow" / "dashboards"
PROMETHEUS_OWN = {"up", "ALERTS"}  # series Prometheus records itself (targets, alert states)
# Grafana's range variables stand for a duration; every other variable sits in a label matcher.
RANGE_VARIABLE = re.compile(r"\$__(rate_interval|interval|range)\b")
VARIABLE = re.compile(r"\$\{?\w+\}?")


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, Grafana's variables filled in."""
    return [
        (panel["title"], promql(target["expr"]))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def promql(expr: str) -> str:
    """`expr` as Prometheus receives it: range variables as 5m, the others as `.*`."""
    return VARIABLE.sub(".*", RANGE_VARIABLE.sub("5m", expr))


def metric_names(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found
