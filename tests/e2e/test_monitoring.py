"""The local Prometheus (devstack/prometheus.py) the e2e stack runs: it scrapes every process
endpoints.json lists under `runtime.metrics`, loads the chart's alert rules, sees the echo
function's error ratio alert go pending when Redis is down and resolve once it is back; and the
metrics every dashboard names are exported by the running processes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import requests
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from devstack.config import PATHS, ROOT
from tests.dashboard_support import PROMETHEUS_OWN, dashboards, expressions, metric_names
from tests.support import Prometheus, start_stack, stop_service, wait_for

RULES = ROOT / "charts" / "objectflow" / "rules" / "objectflow.rules.yaml"
ERROR_RATIO = "ObjectflowFunctionErrorRatio"
# The sample names of a metric family, by type, as a text exposition writes them (a labelled
# family is declared by its `# TYPE` line before its first sample).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def endpoints() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(PATHS.endpoints_file.read_text())
    return found


def metrics_targets() -> dict[str, str]:
    return {name: t["url"] for name, t in endpoints()["runtime"]["metrics"].items()}


def test_every_metrics_endpoint_is_scraped_and_up(prometheus: Prometheus) -> None:
    assert endpoints()["monitoring"]["prometheus"]["url"] == prometheus.url
    wanted = metrics_targets()
    assert {"broker", "echo", "camera-ingest", "dead-letter", "ota-outbox-relay"} <= set(wanted)
    assert "mongo-outbox" in wanted  # a source with a metrics port
    assert not [name for name in wanted if name.startswith("e2e-")]  # test subscribers have none

    def scraped() -> dict[str, str]:
        found = {t["labels"]["component"]: t for t in prometheus.targets()}
        healthy = {name: t["scrapeUrl"] for name, t in found.items() if t["health"] == "up"}
        return healthy if healthy.keys() == wanted.keys() else {}

    assert wait_for(scraped, timeout=30, what="every target scraped") == wanted


def test_the_chart_alert_rules_are_loaded(prometheus: Prometheus) -> None:
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    groups = prometheus.get("rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == shipped
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def test_status_lists_prometheus(prometheus: Prometheus) -> None:
    command = [sys.executable, "-m", "devstack.cli", "status"]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert f"prometheus: {prometheus.url}" in shown.stdout.replace("\n", "")


def exported(url: str) -> set[str]:
    """The sample names the process at `url` exports."""
    names = set()
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        names.add(family.name)
        names.update(family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_a_dashboard_names_is_exported_by_a_running_process(
    prometheus: Prometheus,
) -> None:
    running = set().union(*(exported(url) for url in metrics_targets().values()))
    for name, dashboard in dashboards().items():
        for title, expr in expressions(dashboard):
            missing = metric_names(expr) - running - PROMETHEUS_OWN
            assert not missing, f"{name} / {title}: {sorted(missing)} not exported"
            prometheus.query(expr)  # and this Prometheus evaluates it


def echo_event(message: str) -> tuple[dict[str, str], bytes]:
    event = CloudEvent(
        {"type": "objectflow.echo.requested.v1", "source": "/tests/monitoring",
         "id": str(uuid.uuid4())},
        {"message": message},
    )  # fmt: skip
    headers, body = to_binary(event)
    return dict(headers), body


def post_echo(message: str) -> int:
    """Post one event straight to the echo function (no broker retries to blur the count)."""
    url = endpoints()["runtime"]["functions"]["echo"]["url"]
    headers, body = echo_event(message)
    return requests.post(url, headers=headers, data=body, timeout=30).status_code


def test_a_redis_outage_makes_echo_error_ratio_alert_pending_then_it_resolves(
    prometheus: Prometheus,
) -> None:
    """The rule (rules/objectflow.rules.yaml, `for: 2m`) goes pending at the first evaluation
    that sees the ratio above 5%; firing would follow 2 minutes later, so the test stops at
    pending to keep Redis down for seconds. Resolving needs the 5-minute ratio below 5% again:
    successful events after Redis returns outweigh the failed ones."""
    assert prometheus.alerts(ERROR_RATIO, function="echo") == []
    failed = 0
    stop_service("redis")
    try:

        def failing_until_pending() -> list[dict[str, Any]]:
            nonlocal failed
            assert post_echo("during the outage") == 503
            failed += 1
            return prometheus.alerts(ERROR_RATIO, function="echo")

        (alert,) = wait_for(failing_until_pending, timeout=60, interval=0.5, what="pending")
    finally:
        start_stack()
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == "echo: more than 5% of events fail"

    def succeeding_until_resolved() -> bool:
        assert all(post_echo("after the outage") == 200 for _ in range(max(failed, 20)))
        return prometheus.alerts(ERROR_RATIO, function="echo") == []

    wait_for(succeeding_until_resolved, timeout=90, interval=0.2, what=f"{ERROR_RATIO} resolved")
