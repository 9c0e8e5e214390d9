"""The chart: lint, render under every value set, validate every manifest against the
Kubernetes and Knative schemas, and hold the security policies."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from devstack import wiring
from tests.chart.conftest import (
    CHART,
    DEV,
    E2E,
    VALUE_SETS,
    Render,
    containers,
    of_kind,
    pod_templates,
    run,
    template,
    value_args,
)

# Every rendering the tests validate: the shipped value sets, the e2e subscribers over the dev
# values (6-field cron, a Kafka source), and PingSources instead of CronJobs.
RENDERINGS: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    **{name: (overlays, ()) for name, overlays in VALUE_SETS.items()},
    "dev+e2e": ((DEV, E2E), ()),
    "pingsource": ((), ("scheduler.mode=pingsource",)),
    "monitoring": ((), ("monitoring.enabled=true",)),  # the PrometheusRule, the dashboards
    # `scale` as Knative annotations and containerConcurrency; sources into a Knative Service
    "dev+e2e+scaled-direct": (
        (DEV, E2E),
        (
            "functions.e2e-exact.scale.min=1,functions.e2e-exact.scale.max=4",
            "functions.e2e-exact.scale.concurrency=2",
            "sources.mqtt-bridge.sink=e2e-sources,sources.kafka.e2e-kafka.sink=e2e-sources",
        ),
    ),
}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: Path, value_set: str) -> None:
    result = run(
        helm, "lint", "--strict", CHART, "-n", "objectflow", *value_args(VALUE_SETS[value_set])
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_manifest_is_valid_against_kubernetes_and_knative_schemas(
    helm: Path, kubeconform: Path, schema_locations: list[str], tmp_path: Path, rendering: str
) -> None:
    overlays, sets = RENDERINGS[rendering]
    result = template(helm, overlays, sets)
    assert result.returncode == 0, result.stderr
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(result.stdout)
    checked = run(
        kubeconform, "-strict", "-summary", "-output", "json", *schema_locations, manifests
    )
    report = json.loads(checked.stdout)
    problems = [f"{r['kind']} {r['name']}: {r['msg']}" for r in report["resources"]]
    assert checked.returncode == 0 and not problems, "\n".join(problems)
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert report["summary"]["valid"] == len(rendered)


def test_strict_validation_catches_a_misspelt_field(
    kubeconform: Path, schema_locations: list[str], tmp_path: Path
) -> None:
    """A guard on the generated schemas: unknown fields are errors, in Knative kinds too."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n"
        "  template: {spec: {containers: [{image: x, securityContext: {runAsNonroot: true}}]}}\n"
    )
    checked = run(kubeconform, "-strict", *schema_locations, bad)
    assert checked.returncode != 0
    assert "runAsNonroot" in checked.stdout


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_container_is_non_root_read_only_without_capabilities(
    render: Render, rendering: str
) -> None:
    manifests = render(*RENDERINGS[rendering])
    checked = 0
    for manifest in manifests:
        for container in containers(manifest):
            where = f"{manifest['kind']} {manifest['metadata']['name']} / {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) > 0, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_no_pod_mounts_a_service_account_token(render: Render, rendering: str) -> None:
    for manifest in render(*RENDERINGS[rendering]):
        for pod in pod_templates(manifest):
            name = manifest["metadata"]["name"]
            assert pod["spec"].get("automountServiceAccountToken") is False, name


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_no_secret_value_in_any_config_map(render: Render, rendering: str) -> None:
    manifests = render(*RENDERINGS[rendering])
    secrets = {
        base64.b64decode(value).decode()
        for secret in of_kind(manifests, "Secret")
        for value in secret.get("data", {}).values()
    }
    for config_map in of_kind(manifests, "ConfigMap"):
        for key, value in config_map["data"].items():
            assert not re.search(wiring.SECRET_SETTING, key), key
            assert not any(secret in value for secret in secrets), key


def leaves(node: object, path: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in leaves(v, f"{path}[{i}]")]
    return [(path, node)]


@pytest.mark.parametrize("path", sorted(CHART.glob("values*.yaml")), ids=lambda p: p.name)
def test_values_files_hold_no_credentials(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    for key, _ in leaves(values):
        if re.search("password|secret|token", key.rsplit(".", 1)[-1], re.IGNORECASE):
            assert key == ".secrets.existing-secret", f"{path.name}: {key}"
    if path.name == "values.yaml":
        assert values["secrets"] == {"existing-secret": ""}


def test_a_credential_in_config_is_refused(helm: Path) -> None:
    result = template(helm, sets=("config.DB_PASSWORD=hunter2",))
    assert result.returncode != 0
    assert "DB_PASSWORD" in result.stderr


def test_with_an_existing_secret_the_chart_generates_none(render: Render) -> None:
    manifests = render(VALUE_SETS["production"])
    assert not of_kind(manifests, "Secret")
    for manifest in manifests:
        for container in containers(manifest):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == "objectflow-credentials"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_trigger_dead_letters_to_the_dead_letter_service(
    render: Render, rendering: str
) -> None:
    manifests = render(*RENDERINGS[rendering])
    services = {s["metadata"]["name"] for s in of_kind(manifests, "Service", "serving.knative.dev")}
    triggers = of_kind(manifests, "Trigger")
    assert triggers
    for trigger in triggers:
        sink = trigger["spec"]["delivery"]["deadLetterSink"]["ref"]
        assert sink == {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": "dead-letter",
        }
        assert sink["name"] in services


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_cron_job_forbids_concurrent_runs(render: Render, rendering: str) -> None:
    for cron_job in of_kind(render(*RENDERINGS[rendering]), "CronJob"):
        spec = cron_job["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] >= 0 and spec["failedJobsHistoryLimit"] >= 0
        assert spec["timeZone"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_behind_the_default_deny_policy(render: Render, value_set: str) -> None:
    manifests = render(VALUE_SETS[value_set])
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(manifests, "NetworkPolicy")}
    deny = policies["objectflow-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    selector = deny["podSelector"]["matchLabels"].items()
    for manifest in manifests:
        for pod in pod_templates(manifest):
            assert selector <= pod["metadata"]["labels"].items(), manifest["metadata"]["name"]


def test_a_seconds_cron_cannot_become_a_ping_source(helm: Path) -> None:
    result = template(helm, (DEV, E2E), ("scheduler.mode=pingsource",))
    assert result.returncode != 0
    assert "e2e-ticks" in result.stderr and "seconds field" in result.stderr


# What would betray a rendering that still uses values' namespace instead of the release's.
LOCAL_NAMESPACE = re.compile(
    r"namespaces/objectflow/|\.objectflow\.svc|cluster\.local/objectflow/|--namespace=objectflow"
)


@pytest.mark.parametrize("rendering", ["default", "dev+e2e", "production"])
def test_the_release_installs_into_any_namespace(helm: Path, rendering: str) -> None:
    overlays, sets = RENDERINGS[rendering]
    result = template(helm, overlays, sets, namespace="staging")
    assert result.returncode == 0, result.stderr
    assert not LOCAL_NAMESPACE.findall(result.stdout)
    manifests = [d for d in yaml.safe_load_all(result.stdout) if d]
    for manifest in manifests:
        assert manifest["metadata"]["namespace"] == "staging", manifest["metadata"]["name"]
    for trigger in of_kind(manifests, "Trigger"):
        for source in re.findall(r"/apis/v1/namespaces/([^/]+)/", json.dumps(trigger["spec"])):
            assert source == "staging", trigger["metadata"]["name"]
    for cron_job in of_kind(manifests, "CronJob"):
        (container,) = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert "--namespace=staging" in container["args"]
    for binding in of_kind(manifests, "SinkBinding"):  # K_SINK: the broker of this namespace
        assert binding["spec"]["sink"]["ref"]["name"] == "default"


def test_an_unknown_schedule_fails_the_render(helm: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "unknown-schedule.yaml"
    trigger = {"name": "echo-tick", "schedule": "nowhere"}
    overlay.write_text(yaml.safe_dump({"functions": {"echo": {"triggers": [trigger]}}}))
    result = template(helm, (overlay,))
    assert result.returncode != 0
    assert 'schedule "nowhere" is not a key of `schedules`' in result.stderr


def test_http_services_run_as_asgi_apps(render: Render) -> None:
    values = wiring.default()
    for service in of_kind(render(), "Service", "serving.knative.dev"):
        name = service["metadata"]["name"]
        (container,) = service["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        http = values.served()[name].kind == "http"
        assert env.get("FUNCTION_USE_ASGI") == ("true" if http else None), name
