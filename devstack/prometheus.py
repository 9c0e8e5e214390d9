"""Debian's Prometheus on the local stack: `make up MONITORING=1` (`objectflow up --monitoring`),
or `local.prometheus.enabled` in the values (the e2e overlay sets it).

It scrapes every process of the runtime that serves Prometheus metrics (the broker, each
function and platform component, the sources with a metrics port: `runtime.metrics` of
.devstack/endpoints.json) and evaluates charts/objectflow/rules/objectflow.rules.yaml, the rules
the chart ships. The config is generated at every `up`; a running Prometheus reloads it (SIGHUP)
when it changed, e.g. after the runtime restarted with other values. Data and config live in
.devstack/data/prometheus/; its URL is `monitoring.prometheus` in endpoints.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from typing import Any

import requests
import tenacity
import yaml

from devstack import process, wiring
from devstack.config import HOST, PATHS
from devstack.errors import DevstackError
from devstack.install import PROMETHEUS, PROMTOOL, run
from devstack.services import ServiceSpec

HOME = PATHS.data("prometheus")
CONFIG = HOME / "prometheus.yml"
# A copy, so Prometheus keeps the rules of the checkout that last ran `up` even if that
# checkout goes away.
RULES = HOME / "rules" / "objectflow.rules.yaml"
SOURCE_RULES = wiring.ROOT / "charts" / "objectflow" / "rules" / "objectflow.rules.yaml"
# Scrape jobs: ObjectflowTargetDown watches `up` of jobs whose name contains "objectflow".
JOBS = {"broker": "objectflow-broker", "source": "objectflow-sources"}
FUNCTIONS_JOB = "objectflow-functions"


def spec(settings: wiring.LocalPrometheus) -> ServiceSpec:
    command = [
        "prometheus", f"--config.file={CONFIG}", f"--storage.tsdb.path={HOME / 'tsdb'}",
        "--storage.tsdb.retention.time=2d", f"--web.listen-address={HOST}:{settings.port}",
    ]  # fmt: skip
    return ServiceSpec(name="prometheus", port=settings.port, command=command, needs=(PROMETHEUS,))


def url(settings: wiring.LocalPrometheus) -> str:
    return f"http://{HOST}:{settings.port}/"


def config(targets: dict[str, dict[str, str]], interval: str) -> dict[str, Any]:
    """The scrape config: one target group per component (label `component`), in a job per
    kind of process (`targets`: endpoints.json's `runtime.metrics`)."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for name, target in targets.items():
        job = JOBS.get(target["kind"], FUNCTIONS_JOB)
        address = target["url"].removeprefix("http://").split("/", 1)[0]
        jobs.setdefault(job, []).append({"targets": [address], "labels": {"component": name}})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": groups}
            for job, groups in sorted(jobs.items())
        ],
    }


def write_config(settings: wiring.LocalPrometheus) -> bool:
    """Write the rules copy and the config from endpoints.json, checked by promtool; return
    whether either changed."""
    endpoints = json.loads(PATHS.endpoints_file.read_text())
    targets = endpoints.get("runtime", {}).get("metrics", {})
    text = yaml.safe_dump(config(targets, settings.scrape_interval), sort_keys=False)
    before = [p.read_bytes() if p.exists() else b"" for p in (CONFIG, RULES)]
    RULES.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE_RULES, RULES)
    candidate = CONFIG.with_suffix(".new.yml")
    candidate.write_text(text)
    try:
        run([PROMTOOL.provides, "check", "config", candidate], "promtool check config")
    except DevstackError:
        candidate.unlink()
        raise
    candidate.replace(CONFIG)
    return [p.read_bytes() for p in (CONFIG, RULES)] != before


def reload(service: ServiceSpec, pid: int, timeout: float = 20) -> None:
    """SIGHUP: Prometheus re-reads its config and rules; wait until it says it has."""
    asked = time.time()
    os.kill(pid, signal.SIGHUP)

    def reloaded() -> bool:
        metrics = requests.get(f"http://{HOST}:{service.port}/metrics", timeout=2).text
        values = dict(
            line.split(" ", 1)
            for line in metrics.splitlines()
            if line.startswith("prometheus_config_last_reload_")
        )
        if float(values["prometheus_config_last_reload_success_timestamp_seconds"]) >= int(asked):
            return True
        if values["prometheus_config_last_reload_successful"].strip() == "0":
            raise refused(service, "it refused the new config")
        return False

    try:
        tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.2),
            retry=tenacity.retry_if_result(lambda ok: not ok)
            | tenacity.retry_if_exception_type(requests.RequestException),
        )(reloaded)
    except tenacity.RetryError:
        raise refused(service, f"no config reload after {timeout:.0f}s") from None


def refused(service: ServiceSpec, reason: str) -> DevstackError:
    log = PATHS.log(service.name)
    return DevstackError(
        f"{service.name}: {reason} ({CONFIG})\n  log: {log} (last lines below)\n"
        f"{process.log_tail(log)}"
    )


def write_endpoint(settings: wiring.LocalPrometheus) -> None:
    """List Prometheus under `monitoring.prometheus` in endpoints.json."""
    endpoints = json.loads(PATHS.endpoints_file.read_text())
    endpoints["monitoring"] = {
        "prometheus": {
            "host": HOST,
            "port": settings.port,
            "url": url(settings),
            "log": str(PATHS.log("prometheus")),
            "config": str(CONFIG),
            "rules": str(RULES),
        }
    }
    PATHS.endpoints_file.write_text(json.dumps(endpoints, indent=2) + "\n")


def alerts_summary(settings: wiring.LocalPrometheus) -> str:
    """The URL and how many alerts are pending and firing, for `objectflow status`."""
    try:
        answer = requests.get(f"{url(settings)}api/v1/alerts", timeout=2)
        alerts = answer.json()["data"]["alerts"]
    except (requests.RequestException, ValueError, KeyError):
        return f"not running on :{settings.port} (make up MONITORING=1)"
    states = [alert["state"] for alert in alerts]
    return (
        f"{url(settings)} ({states.count('firing')} alerts firing, "
        f"{states.count('pending')} pending: {url(settings)}alerts)"
    )
