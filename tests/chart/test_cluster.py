"""The chart on a real cluster: what a rendered manifest needs to install and run there (issue 12,
"The chart on a real cluster"), read from the rendered YAML."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    DEV,
    E2E,
    PRODUCTION,
    Manifest,
    Render,
    containers,
    of_kind,
    pod_templates,
    run,
    template,
)

# What each dev service writes with a read-only root filesystem, and why. Paths its env names
# (PGDATA, LOG_DIR, HOME, FERRETDB_STATE_DIR) are added by the test.
WRITES = {
    "postgresql": ["/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"],  # data, socket
    "redis": ["/data"],  # --dir: the append-only file and snapshots
    "rabbitmq": [
        "/var/lib/rabbitmq",  # mnesia, and .erlang.cookie in its HOME
        "/var/log/rabbitmq",  # 3.13 opens its upgrade log here even when logging to the console
        "/tmp",
    ],
    "kafka": ["/var/lib/kafka/data/logs", "/tmp/kafka-logs"],  # log.dirs (format, segments), log4j
    "mosquitto": [
        "/mosquitto/data",
        "/mosquitto/auth",
    ],  # persistence, the passwd file made at start
    "minio": [
        "/data/.notify-queue",
        "/data",
        "/tmp",
    ],  # the drive, the webhook queue, HOME (.minio)
    "ferretdb": ["/state"],  # its state file (the data is in PostgreSQL)
}
PATH_ENV = ("PGDATA", "LOG_DIR", "HOME", "FERRETDB_STATE_DIR")


def writable_mounts(pod: dict[str, Any], container: dict[str, Any], claims: set[str]) -> set[str]:
    """Mount paths of `container` backed by an emptyDir or a PersistentVolumeClaim."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    return {
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if m["name"] in claims or "emptyDir" in volumes.get(m["name"], {})
    }


def env_paths(container: dict[str, Any]) -> list[str]:
    found = []
    for entry in container.get("env", []):
        value = str(entry.get("value", ""))
        if entry["name"] in PATH_ENV:
            found.append(value.removeprefix("file:").rstrip("/") or "/")
    return found


def covered(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def test_every_path_a_dev_service_writes_is_a_writable_mount(render: Render) -> None:
    stateful_sets = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in of_kind(render((DEV,)), "StatefulSet")
    }
    assert set(stateful_sets) == set(WRITES)
    for name, manifest in stateful_sets.items():
        claims = {c["metadata"]["name"] for c in manifest["spec"].get("volumeClaimTemplates", [])}
        (pod,) = pod_templates(manifest)
        for container in containers(manifest):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = writable_mounts(pod, container, claims)
            expected = env_paths(container)
            if container["name"] == name:
                expected += WRITES[name]
            missing = [path for path in expected if not covered(path, mounts)]
            assert not missing, f"{name}/{container['name']} writes {missing}; mounts {mounts}"


def test_every_dev_job_writes_only_where_it_may(render: Render) -> None:
    for job in of_kind(render((DEV, E2E)), "Job"):
        (pod,) = pod_templates(job)
        for container in containers(job):
            missing = [
                p
                for p in env_paths(container)
                if not covered(p, writable_mounts(pod, container, set()))
            ]
            assert not missing, f"{job['metadata']['name']}/{container['name']} writes {missing}"


def test_stateful_sets_are_governed_by_headless_services(render: Render) -> None:
    manifests = render((DEV,))
    services = {m["metadata"]["name"]: m for m in of_kind(manifests, "Service", "v1")}
    for stateful_set in of_kind(manifests, "StatefulSet"):
        governing = services[stateful_set["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None", stateful_set["metadata"]["name"]


def broker_and_config(manifests: list[Manifest]) -> tuple[Manifest, dict[str, str] | None]:
    (broker,) = of_kind(manifests, "Broker")
    ref = broker.get("spec", {}).get("config")
    config = next(
        (
            m["data"]
            for m in of_kind(manifests, "ConfigMap")
            if ref and m["metadata"]["name"] == ref["name"]
        ),
        None,
    )
    return broker, config


def test_dev_values_render_a_kafka_class_broker_with_its_own_config(render: Render) -> None:
    broker, config = broker_and_config(render((DEV,)))
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    assert broker["spec"]["config"]["namespace"] == broker["metadata"]["namespace"]
    assert config == {
        "bootstrap.servers": "objectflow-kafka.objectflow.svc.cluster.local:9092",
        "default.topic.partitions": "10",
        "default.topic.replication.factor": "1",
    }


def test_a_kafka_class_broker_takes_bootstrap_servers_from_the_kafka_settings(
    render: Render,
) -> None:
    sets = ("broker.class=Kafka", "config.KAFKA_BOOTSTRAP_SERVERS=kafka-0:9092\\,kafka-1:9092")
    _broker, config = broker_and_config(render((), sets))
    assert config is not None
    assert config["bootstrap.servers"] == "kafka-0:9092,kafka-1:9092"
    assert config["default.topic.replication.factor"] == "3"


def test_production_points_at_its_configured_broker_config(render: Render) -> None:
    broker, config = broker_and_config(render((PRODUCTION,)))
    assert broker["spec"]["config"]["name"] == "kafka-broker-config"
    assert config is None  # not rendered: it is the operator's


def test_a_kafka_class_broker_without_config_or_servers_fails_the_render(helm: Path) -> None:
    result = template(helm, (), ("broker.class=Kafka", "config.KAFKA_BOOTSTRAP_SERVERS=null"))
    assert result.returncode != 0
    assert "broker.class Kafka needs broker.config" in result.stderr


def notes(helm: Path, tmp_path: Path, overlays: tuple[Path, ...] = (), *sets: str) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` leaves NOTES out, so a copy of the
    chart renders it into a manifest)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "NOTES.copy")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "NOTES.copy") . | toJson }}\n'
    )
    args = [a for o in overlays for a in ("-f", str(o))] + [a for s in sets for a in ("--set", s)]
    result = run(
        helm, "template", "objectflow", chart, "-n", "objectflow",
        "--show-only", "templates/notes.yaml", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["notes"])


def test_notes_warn_when_ordered_triggers_meet_a_class_that_cannot_honour_them(
    helm: Path, tmp_path: Path
) -> None:
    mt = notes(helm, tmp_path / "mt")
    warning = next(line for line in mt.splitlines() if line.startswith("WARNING: triggers "))
    assert "camera-chunk-received" in warning and "are `ordered`" in warning
    assert "MTChannelBasedBroker broker\ndoes not honour" in mt
    assert "WARNING" not in notes(helm, tmp_path / "dev", (DEV,))


def test_the_minio_webhook_is_cluster_local_unless_public(
    render: Render, helm: Path, tmp_path: Path
) -> None:
    def webhook(*sets: str) -> Manifest:
        services = of_kind(render((), sets), "Service", "serving.knative.dev")
        return next(s for s in services if s["metadata"]["name"] == "minio-webhook")

    private = webhook()["metadata"]["labels"]
    assert private["networking.knative.dev/visibility"] == "cluster-local"
    assert (
        "networking.knative.dev/visibility"
        not in webhook("sources.minio.public=true")["metadata"]["labels"]
    )
    public = notes(helm, tmp_path, (), "sources.minio.public=true")
    assert "get ksvc minio-webhook -o jsonpath='{.status.url}'" in public
    assert "svc.cluster.local/ auth_token" not in public


def test_the_mqtt_bridge_rolls_with_recreate_and_gets_k_sink_from_a_sinkbinding(
    render: Render,
) -> None:
    manifests = render((DEV,))
    (bridge,) = [
        d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "mqtt-bridge"
    ]
    assert bridge["spec"]["replicas"] == 1
    assert bridge["spec"]["strategy"] == {"type": "Recreate"}  # one client id, one session
    (container,) = containers(bridge)
    names = {e["name"] for e in container["env"]}
    assert "K_SINK" not in names
    assert {"OBJECTFLOW_DEAD_LETTER_SINK", "OBJECTFLOW_MAX_EVENT_BYTES"} <= names  # Kafka class
    subjects = [b["spec"]["subject"] for b in of_kind(manifests, "SinkBinding")]
    assert {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mqtt-bridge"} in subjects


@pytest.mark.parametrize(
    "overlays", [(), (DEV, E2E), (PRODUCTION,)], ids=["default", "dev+e2e", "production"]
)
def test_no_workload_hard_codes_k_sink(render: Render, overlays: tuple[Path, ...]) -> None:
    """A SinkBinding keeps K_SINK current when transport encryption or OIDC changes the broker's
    address; a literal URL would not."""
    for manifest in render(overlays):
        for container in containers(manifest):
            assert "K_SINK" not in {e["name"] for e in container.get("env", [])}, manifest[
                "metadata"
            ]["name"]


def test_kafka_sources_deliver_explicitly_and_end_in_the_dead_letter_service(
    render: Render, tmp_path: Path
) -> None:
    overlay = tmp_path / "kafka.yaml"
    overlay.write_text(yaml.safe_dump({"sources": {"kafka": {"orders": {
        "topics": ["orders"], "consumer-group": "g", "delivery": {"retry": 8},
    }}}}))  # fmt: skip
    sources = of_kind(render((DEV, overlay)), "KafkaSource")
    (source,) = [s for s in sources if s["metadata"]["name"] == "orders"]
    assert source["spec"]["delivery"] == {
        "retry": 8,
        "backoffPolicy": "exponential",
        "backoffDelay": "PT0.2S",
        "timeout": "PT30S",
        "deadLetterSink": {
            "ref": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "name": "dead-letter",
            }
        },
    }


def test_the_dead_letter_store_takes_what_the_broker_would_not_in_both_engines(
    render: Render,
) -> None:
    """A source dead-letters an event over the Kafka class's 1 MiB; the store must take it."""
    from devstack.runtime.supervisor import PLATFORM_ENV

    services = of_kind(render((DEV,)), "Service", "serving.knative.dev")
    (store,) = [s for s in services if s["metadata"]["name"] == "dead-letter"]
    (container,) = containers(store)
    deployed = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    local = PLATFORM_ENV["dead-letter"]
    assert deployed["OBJECTFLOW_MAX_EVENT_BYTES"] == local["OBJECTFLOW_MAX_EVENT_BYTES"]
    assert int(local["OBJECTFLOW_MAX_EVENT_BYTES"]) > 1024 * 1024
