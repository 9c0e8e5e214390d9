"""The alert rules (charts/objectflow/rules/objectflow.rules.yaml): promtool checks them and runs
their unit tests (a firing and a sparing case per alert), every metric they name is one the code
registers, every alert has its entry in docs/operations.md, and the chart renders the same rules
as a PrometheusRule that kubeconform accepts (test_chart.py's "monitoring" rendering)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from devstack.config import ROOT
from tests.chart.conftest import CHART, Render, of_kind, run

RULES = CHART / "rules" / "objectflow.rules.yaml"
RULE_TESTS = CHART / "rules" / "objectflow.rules.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
# Every module that registers Prometheus metrics (functions' and the local runtime's processes).
METRIC_MODULES = (
    "functions.runtime.metrics",
    "functions.camera.metrics",
    "functions.catalog.metrics",
    "functions.detections.metrics",
    "functions.ota.metrics",
    "functions.ota.relay",
    "functions.sources.sink",
    "functions.sources.mongo_outbox",
    "devstack.runtime.kafka_source",
    "devstack.runtime.broker",
)
PROMETHEUS_OWN = {"up"}  # what Prometheus records per target itself
PROMQL_WORDS = {"by", "without", "on", "ignoring", "and", "or", "unless", "offset", "bool"}


def alerts() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: what is left once label matchers, ranges,
    grouping clauses and function calls are taken out."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr)
    return set(names) - PROMQL_WORDS


def exported() -> set[str]:
    """Sample names of every metric the code registers (counters as `_total`)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_checks_the_rules(promtool: Path) -> None:
    checked = run(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    tested = run(promtool, "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_wrong_expectation_fails_the_unit_tests(promtool: Path, tmp_path: Path) -> None:
    """A guard on the test above: promtool compares alerts exactly (labels and annotations)."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 0.05", "> 0.6"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    tested = run(promtool, "test", "rules", tmp_path / RULE_TESTS.name)
    assert tested.returncode != 0
    assert "alertname: ObjectflowFunctionErrorRatio" in tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_sparing_case() -> None:
    """Firing: a case expecting it. Sparing: a case expecting none, or inputs beyond the alerts
    expected (each test groups a firing series with one that must not fire)."""
    fires: set[str] = set()
    spares: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            expected = check["exp_alerts"]
            if expected:
                fires.add(check["alertname"])
            if not expected or len(case["input_series"]) > len(expected):
                spares.add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set()
    assert names - spares == set()


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_metric_an_alert_names_is_exported(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names - exported() - PROMETHEUS_OWN == set()


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_says_what_and_links_its_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    if not rule["expr"].startswith("absent("):  # an absent series has no labels or value to show
        assert "{{ $" in annotations["description"]
    path, _, fragment = annotations["runbook_url"].partition("#")
    assert path == "docs/operations.md"
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.MULTILINE)
    assert fragment == anchor(rule["alert"])
    assert fragment in {anchor(h) for h in headings}


def test_the_chart_renders_the_rules_as_a_prometheus_rule_only_when_enabled(
    render: Render,
) -> None:
    assert of_kind(render(), "PrometheusRule") == []
    sets = ("monitoring.enabled=true", "monitoring.labels.release=kube-prometheus-stack")
    (rule,) = of_kind(render((), sets), "PrometheusRule", "monitoring.coreos.com/v1")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_strict_validation_catches_a_misspelt_rule_field(
    kubeconform: Path, schema_locations: list[str], tmp_path: Path
) -> None:
    """A guard on the generated PrometheusRule schema: it is found, and strict."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\n"
        "spec: {groups: [{name: g, rules: [{alert: A, expr: up == 0, four: 5m}]}]}\n"
    )
    checked = run(kubeconform, "-strict", *schema_locations, bad)
    assert checked.returncode != 0
    assert "four" in checked.stdout
