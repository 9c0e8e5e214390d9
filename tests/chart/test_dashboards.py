"""The Grafana dashboards (charts/objectflow/dashboards/): one overview and one per domain, each
a dashboard the Grafana Foundation SDK's model holds whole (every field known, every panel a
known panel type, every query a Prometheus query), every expression valid PromQL naming metrics
the code registers, and the chart ships them as ConfigMaps for Grafana's sidecar. That the
running processes export those metrics is tests/e2e/test_monitoring.py's part."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.chart.conftest import Render, of_kind
from tests.chart.test_alerts import exported
from tests.dashboard_support import (
    DASHBOARDS,
    PROMETHEUS_OWN,
    dashboards,
    expressions,
    metric_names,
    panels,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ENABLED = ("monitoring.enabled=true",)

register_default_plugins()


def problems(data: dict[str, Any]) -> list[str]:
    """What the SDK's dashboard model does not hold of `data`: fields it drops or changes on a
    decode and encode round trip, panel types it has no model for, queries it does not decode
    as Prometheus queries."""
    decoded = Dashboard.from_json(copy.deepcopy(data))
    found = differences(data, json.loads(json.dumps(decoded, cls=JSONEncoder)), "")
    for panel in decoded.panels or []:
        if panel.to_json()["type"] != "row" and cogruntime.panelcfg_config(panel.type_val) is None:
            found.append(f"panel {panel.title!r}: no panel type {panel.type_val!r}")
        for target in getattr(panel, "targets", None) or []:
            if not isinstance(target, prometheus.Dataquery):
                found.append(f"panel {panel.title!r}: a query that is not Prometheus's")
    return found


def differences(original: Any, again: Any, path: str) -> list[str]:
    if isinstance(original, dict) and isinstance(again, dict):
        return [
            problem
            for key, value in original.items()
            for problem in (
                differences(value, again[key], f"{path}.{key}")
                if key in again
                else [f"{path}.{key}: not a field of the model"]
            )
        ]
    if isinstance(original, list) and isinstance(again, list) and len(original) == len(again):
        return [
            p
            for i, pair in enumerate(zip(original, again, strict=True))
            for p in differences(*pair, f"{path}[{i}]")
        ]
    return [] if original == again else [f"{path}: {original!r} came back as {again!r}"]


def test_an_overview_and_one_dashboard_per_domain() -> None:
    assert set(dashboards()) == {"overview", "camera", "catalog", "detections", "ota"}
    uids = [d["uid"] for d in dashboards().values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_the_sdk_model_holds_the_whole_dashboard(name: str) -> None:
    assert problems(dashboards()[name]) == []


def test_the_model_check_catches_a_misspelt_field_and_an_unknown_panel_type() -> None:
    """A guard on the check above: it is not satisfied by anything that decodes."""
    bad = copy.deepcopy(dashboards()["overview"])
    first = next(p for p in panels(bad) if p["type"] == "timeseries")
    first["targets"][0]["legendFormt"] = first["targets"][0].pop("legendFormat")
    first["type"] = "timeserie"
    found = problems(bad)
    assert any("legendFormt: not a field" in p for p in found), found
    assert any("no panel type 'timeserie'" in p for p in found), found


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_query_is_promql_on_the_datasource_variable(name: str) -> None:
    dashboard = dashboards()[name]
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(set(ids)) == len(ids)
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == DATASOURCE
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])
    for title, expr in expressions(dashboard):
        assert metric_names(expr), f"{title}: {expr}"  # parses, and reads some metric


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_metric_a_dashboard_names_is_registered_by_the_code(name: str) -> None:
    named = {m for _title, expr in expressions(dashboards()[name]) for m in metric_names(expr)}
    assert named - exported() - PROMETHEUS_OWN == set()


def test_the_chart_ships_each_dashboard_as_a_configmap_for_the_sidecar(render: Render) -> None:
    maps = of_kind(render((), ENABLED), "ConfigMap")
    shipped = {
        key: json.loads(text)
        for m in maps
        if m["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key, text in m["data"].items()
    }
    assert shipped == {f"{name}.json": d for name, d in dashboards().items()}
    assert len(list(DASHBOARDS.glob("*.json"))) == len(shipped)


def test_the_sidecar_label_and_folder_are_values(render: Render) -> None:
    sets = (
        *ENABLED,
        "monitoring.grafana.labels.grafana_dashboard=null",
        "monitoring.grafana.labels.dashboards=objectflow",
        "monitoring.grafana.annotations.grafana_folder=objectflow",
    )
    maps = [
        m for m in of_kind(render((), sets), "ConfigMap") if "-dashboard-" in m["metadata"]["name"]
    ]
    assert len(maps) == len(dashboards())
    for m in maps:
        assert m["metadata"]["labels"]["dashboards"] == "objectflow"
        assert "grafana_dashboard" not in m["metadata"]["labels"]
        assert m["metadata"]["annotations"] == {"grafana_folder": "objectflow"}


@pytest.mark.parametrize(
    "sets", [(), ("monitoring.enabled=true", "monitoring.grafana.enabled=false")]
)
def test_no_dashboards_unless_monitoring_and_grafana_are_enabled(
    render: Render, sets: tuple[str, ...]
) -> None:
    names = [m["metadata"]["name"] for m in of_kind(render((), sets), "ConfigMap")]
    assert not [name for name in names if "-dashboard-" in name]
