"""Both engines run exactly the diagram (docs/architecture.md, "The wiring diagram").

For each value set, every function, trigger (filters, delivery, order), schedule and source of
values.yaml is in the rendered manifests and in the local runtime's routing table and process
list, and neither holds anything the values do not declare.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import wiring
from devstack.config import MINIO_WEBHOOK_TARGET, ROOT
from devstack.runtime.broker import routes
from devstack.runtime.supervisor import Component, components
from functions.sources.routes import MqttRoute
from tests.chart.conftest import DEV, E2E, Manifest, Render, of_kind

PINGSOURCE = {"scheduler": {"mode": "pingsource"}}
# `scale` and sources whose sink is a function (a Knative Service) instead of the broker.
SCALED_DIRECT = {
    "functions": {"e2e-exact": {"scale": {"min": 1, "max": 4, "concurrency": 2}}},
    "sources": {
        "mqtt-bridge": {"sink": "e2e-sources"},
        "kafka": {"e2e-kafka": {"sink": "e2e-sources"}},
    },
}
CASES: dict[str, tuple[Path | dict[str, Any], ...]] = {
    "default": (),
    "pingsource": (PINGSOURCE,),
    # The e2e subscribers cover every filter dialect, ordered triggers, delivery overrides, a
    # Kafka source, schedule triggers and a seconds cron; the dev values give them in-cluster
    # services.
    "dev+e2e": (DEV, E2E),
    # The chart in another namespace (helm -n staging), compared with the local runtime after
    # substituting values' namespace for the release's: the same sources, filters and sinks.
    "dev+e2e@staging": (DEV, E2E),
    "dev+e2e+scaled-direct": (DEV, E2E, SCALED_DIRECT),
}
NAMESPACES = {"dev+e2e@staging": "staging"}  # the release's namespace; else values' one


class Both:
    """One value set as each engine sees it."""

    def __init__(
        self, render: Render, overlays: tuple[Path, ...], namespace: str | None = None
    ) -> None:
        self.values = wiring.load(*overlays)
        self.manifests = render(overlays, namespace=namespace)
        if namespace is not None:  # the release's namespace, read as values' one
            text = json.dumps(self.manifests)  # (test_chart: no values' namespace is left)
            self.manifests = json.loads(text.replace(namespace, self.values.namespace))
        self.routes = routes(self.values)
        everything = components(self.values, overlays)
        # One entry per function (its first process); `processes` counts them all.
        self.components = {
            c.name: c for c in everything if c.env.get("K_SERVICE", c.name) == c.name
        }
        self.processes = Counter(c.env.get("K_SERVICE", c.name) for c in everything)

    def named(self, kind_name: str, api_group: str = "") -> dict[str, Manifest]:
        return {m["metadata"]["name"]: m for m in of_kind(self.manifests, kind_name, api_group)}

    @property
    def services(self) -> dict[str, Manifest]:
        return self.named("Service", "serving.knative.dev")


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ...]]:
    """CASES as files, which both engines take (`helm -f`, `objectflow up --values`)."""
    directory = tmp_path_factory.mktemp("values")

    def file(overlay: Path | dict[str, Any], name: str) -> Path:
        if isinstance(overlay, Path):
            return overlay
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        return path

    return {name: tuple(file(o, name) for o in overlays) for name, overlays in CASES.items()}


@pytest.fixture(params=CASES)
def both(
    render: Render, cases: dict[str, tuple[Path, ...]], request: pytest.FixtureRequest
) -> Both:
    return Both(render, cases[request.param], NAMESPACES.get(request.param))


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def entrypoint(component: Component) -> str:
    """`path.py:target` of a functions-framework process of the local runtime."""
    args = component.command
    source = Path(args[args.index("--source") + 1]).relative_to(ROOT)
    return f"{source}:{args[args.index('--target') + 1]}"


def test_the_same_functions_run_with_the_same_entrypoints(both: Both) -> None:
    served = {name: entrypoint(c) for name, c in both.components.items() if "--source" in c.command}
    deployed = {}
    for name, service in both.services.items():
        (container,) = service["spec"]["template"]["spec"]["containers"]
        deployed[name] = "{FUNCTION_SOURCE}:{FUNCTION_TARGET}".format(**env(container))
    assert deployed == served
    declared = {name: fn.entrypoint for name, fn in both.values.served().items()}
    assert deployed == declared
    platform = both.values.platform
    assert platform.dead_letter is not None and platform.minio_webhook is not None
    assert deployed["dead-letter"] == platform.dead_letter.entrypoint
    if both.values.sources.minio.buckets:
        assert deployed["minio-webhook"] == platform.minio_webhook.entrypoint


def test_http_components_run_as_asgi_apps_in_both(both: Both) -> None:
    for name, service in both.services.items():
        (container,) = service["spec"]["template"]["spec"]["containers"]
        asgi = env(container).get("FUNCTION_USE_ASGI") == "true"
        assert asgi == ("--asgi" in both.components[name].command), name
        assert asgi == (both.values.served()[name].kind == "http"), name


def test_http_functions_are_public_and_the_rest_cluster_local(both: Both) -> None:
    for name, service in both.services.items():
        function = both.values.functions.get(name)
        public = function is not None and function.kind == "http"
        visibility = service["metadata"]["labels"].get("networking.knative.dev/visibility")
        assert visibility == (None if public else "cluster-local"), name


def test_the_same_triggers_route_the_same_events_with_the_same_delivery(both: Both) -> None:
    deployed = {}
    for name, trigger in both.named("Trigger").items():
        spec, annotations = trigger["spec"], trigger["metadata"].get("annotations") or {}
        deployed[name] = {
            "broker": spec["broker"],
            "subscriber": spec["subscriber"]["ref"]["name"],
            "filters": spec["filters"],
            "delivery": spec["delivery"],
            "ordered": annotations.get("kafka.eventing.knative.dev/delivery.order") == "ordered",
        }
    dead_letter = {
        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dead-letter"}
    }
    routed = {}
    for route in both.routes:
        delivery = {
            "retry": route.delivery.retry,
            "backoffPolicy": route.delivery.backoff_policy,
            "backoffDelay": route.delivery.backoff_delay,
            "timeout": route.delivery.timeout,
        }
        if route.delivery.dead_letter:
            delivery["deadLetterSink"] = dead_letter
        routed[route.trigger.name] = {
            "broker": both.values.broker.name,
            "subscriber": route.function,
            "filters": [
                f.model_dump(by_alias=True, exclude_none=True) for f in route.trigger.filters
            ],
            "delivery": delivery,
            "ordered": route.trigger.ordered,
        }
    assert deployed == routed
    assert len(routed) == sum(len(fn.triggers) for fn in both.values.functions.values())


def test_the_same_schedules_tick_the_same_events(both: Both) -> None:
    values = both.values
    assert ("cron-ticker" in both.components) == bool(values.schedules)
    if values.scheduler.mode == "pingsource":
        deployed = {
            name: (s["spec"]["schedule"], s["spec"]["timezone"], json.loads(s["spec"]["data"]))
            for name, s in both.named("PingSource").items()
        }
        assert not both.named("CronJob")
    else:
        deployed = {}
        for name, cron_job in both.named("CronJob").items():
            pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
            assert args["name"] == name and args["namespace"] == values.namespace
            assert cron_job["spec"]["schedule"] == " ".join(args["cron"].split()[:5])
            assert cron_job["spec"]["timeZone"] == args["timezone"]
            deployed[name] = (args["cron"], args["timezone"], json.loads(args["data"]))
        assert not both.named("PingSource")
    declared = {name: (s.cron, s.timezone, s.data) for name, s in values.schedules.items()}
    assert deployed == declared


def test_the_same_kafka_sources_consume_the_same_topics(both: Both) -> None:
    deployed = {
        name: (s["spec"]["topics"], s["spec"]["consumerGroup"], s["spec"]["initialOffset"])
        for name, s in both.named("KafkaSource").items()
    }
    declared = {
        name: (s.topics, s.consumer_group, s.initial_offset)
        for name, s in both.values.sources.kafka.items()
    }
    assert deployed == declared
    local = {n.removeprefix("kafka-source-") for n in both.components if n.startswith("kafka-")}
    assert local == set(declared)
    for name, source in both.named("KafkaSource").items():
        assert sink_of(source) == both.values.sources.kafka[name].sink
        assert both.components[f"kafka-source-{name}"].env["K_SINK"] == local_sink(
            both, both.values.sources.kafka[name].sink
        )


def sink_of(source: Manifest) -> str | None:
    """The function a rendered source sends to directly, or None for the broker."""
    ref = source["spec"]["sink"]["ref"]
    if ref["kind"] == "Broker":
        return None
    assert ref == {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": ref["name"]}
    return str(ref["name"])


def local_sink(both: Both, function: str | None) -> str:
    if function is None:
        return f"http://127.0.0.1:{both.values.local.broker_port}/"
    return f"http://127.0.0.1:{both.values.ports()[function]}/"


def test_the_same_scale_in_both(both: Both) -> None:
    for name, function in both.values.functions.items():
        template = both.services[name]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        if function.scale.min is not None:
            assert annotations["autoscaling.knative.dev/min-scale"] == str(function.scale.min)
        if function.scale.max is not None:
            assert annotations["autoscaling.knative.dev/max-scale"] == str(function.scale.max)
        concurrency = function.scale.concurrency
        if concurrency is not None:
            assert template["spec"]["containerConcurrency"] == concurrency
        assert both.processes[name] == function.scale.processes, name
        for route in (r for r in both.routes if r.function == name):
            assert len(route.processes) == function.scale.processes
            assert route.concurrency == (concurrency or 0)


def test_the_same_mqtt_bridge_routes(both: Both) -> None:
    bridge = both.values.sources.mqtt_bridge
    deployed = {n: d for n, d in both.named("Deployment").items() if n == "mqtt-bridge"}
    local = both.components.get("mqtt-bridge")
    if not bridge.routes:
        assert not deployed and local is None
        return
    assert set(deployed) == {"mqtt-bridge"} and local is not None
    (container,) = deployed["mqtt-bridge"]["spec"]["template"]["spec"]["containers"]
    assert shlex.join(container["command"]) == "python -m functions.sources.mqtt_bridge"
    assert local.command[1:] == ["-m", "functions.sources.mqtt_bridge"]

    def parsed(settings: dict[str, str]) -> tuple[list[MqttRoute], str]:
        routes = [
            MqttRoute.model_validate(r) for r in json.loads(settings["OBJECTFLOW_MQTT_ROUTES"])
        ]
        return routes, settings["OBJECTFLOW_MQTT_CLIENT_ID"]

    assert parsed(env(container)) == parsed(local.env) == (bridge.routes, bridge.client_id)
    assert sink_of(both.named("SinkBinding")["mqtt-bridge"]) == bridge.sink
    assert local.env["K_SINK"] == local_sink(both, bridge.sink)


def test_the_same_mongo_outbox_source(both: Both) -> None:
    declared = both.values.sources.mongo_outbox
    deployed = {n: s for n, s in both.named("ContainerSource").items() if n == "mongo-outbox"}
    local = both.components.get("mongo-outbox")
    if declared is None:
        assert not deployed and local is None
        return
    assert set(deployed) == {"mongo-outbox"} and local is not None
    (container,) = deployed["mongo-outbox"]["spec"]["template"]["spec"]["containers"]
    assert shlex.join(container["command"]) == "python -m functions.sources.mongo_outbox"
    assert local.command[1:] == ["-m", "functions.sources.mongo_outbox"]
    expected = {
        "OBJECTFLOW_OUTBOX_COLLECTION": declared.collection,
        "OBJECTFLOW_OUTBOX_TYPE": declared.type,
        **declared.env,
    }
    assert env(container) == {k: v for k, v in local.env.items() if k != "K_SINK"} == expected
    assert deployed["mongo-outbox"]["spec"]["sink"]["ref"]["kind"] == "Broker"


def test_the_same_outbox_relays_run(both: Both) -> None:
    relays = both.values.sources.outbox_relays
    deployed = {
        name: d
        for name, d in both.named("Deployment", "apps").items()
        if "objectflow.dev/relay" in d["spec"]["selector"]["matchLabels"]
    }
    assert set(deployed) == set(relays)
    for name, relay in relays.items():
        (container,) = deployed[name]["spec"]["template"]["spec"]["containers"]
        assert shlex.join(container["command"]) == f"python -m {relay.module}"
        assert deployed[name]["spec"]["replicas"] == relay.replicas
        assert both.components[name].command[1:] == ["-m", relay.module]


def test_the_same_minio_buckets_notify_the_webhook_adapter(both: Both) -> None:
    buckets = both.values.sources.minio.buckets
    assert (
        ("minio-webhook" in both.services) == ("minio-webhook" in both.components) == bool(buckets)
    )
    if not buckets or not both.values.dev_services or not both.values.dev_services.enabled:
        return
    (setup,) = [j for n, j in both.named("Job").items() if n.endswith("-dev-setup")]
    (minio,) = [c for c in setup["spec"]["template"]["spec"]["containers"] if c["name"] == "minio"]
    script = minio["args"][0]
    arn = f"arn:minio:sqs::{MINIO_WEBHOOK_TARGET}:webhook"
    for bucket in buckets:
        assert f"mc event add --ignore-existing dev/{bucket.bucket} {arn}" in script
    server = next(s for n, s in both.named("StatefulSet").items() if n.endswith("-minio"))
    (container,) = server["spec"]["template"]["spec"]["containers"]
    endpoint = env(container)[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{MINIO_WEBHOOK_TARGET}"]
    assert endpoint == f"http://minio-webhook.{both.values.namespace}.svc.cluster.local/"


def test_nothing_is_wired_that_the_values_do_not_declare(both: Both) -> None:
    wiring_kinds = {
        "Trigger", "CronJob", "PingSource", "KafkaSource", "Deployment", "ContainerSource",
        "Broker",
    }  # fmt: skip
    found = {
        (m["kind"], m["metadata"]["name"])
        for m in both.manifests
        if m["kind"] in wiring_kinds or m["apiVersion"].startswith("serving.knative.dev")
    }
    values = both.values
    expected = {("Broker", values.broker.name), ("Service", "dead-letter")}
    expected |= {("Service", name) for name in values.functions}
    expected |= {("Trigger", t.name) for fn in values.functions.values() for t in fn.triggers}
    schedule_kind = "PingSource" if values.scheduler.mode == "pingsource" else "CronJob"
    expected |= {(schedule_kind, name) for name in values.schedules}
    expected |= {("KafkaSource", name) for name in values.sources.kafka}
    if values.sources.minio.buckets:
        expected.add(("Service", "minio-webhook"))
    if values.sources.mqtt_bridge.routes:
        expected.add(("Deployment", "mqtt-bridge"))
    if values.sources.mongo_outbox is not None:
        expected.add(("ContainerSource", "mongo-outbox"))
    expected |= {("Deployment", name) for name in values.sources.outbox_relays}
    assert found == expected
    local = {"dead-letter", *values.functions}
    local |= {"minio-webhook"} if values.sources.minio.buckets else set()
    local |= {"mqtt-bridge"} if values.sources.mqtt_bridge.routes else set()
    local |= {"mongo-outbox"} if values.sources.mongo_outbox is not None else set()
    local |= {f"kafka-source-{name}" for name in values.sources.kafka}
    local |= set(values.sources.outbox_relays)
    local |= {"cron-ticker"} if values.schedules else set()
    # the local stand-in for a cluster's OTLP collector (the chart's tracing.otlp-endpoint)
    local |= {"trace-collector"} if values.local.tracing.enabled else set()
    assert set(both.components) == local


def test_sources_and_ticks_post_to_the_broker_the_triggers_subscribe_to(both: Both) -> None:
    broker = both.values.broker.name
    # K_SINK is never hard-coded: SinkBindings inject the broker's current address.
    subjects = {
        (b["spec"]["subject"]["kind"], b["spec"]["subject"].get("name", "*"))
        for b in both.named("SinkBinding").values()
        if b["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                        "name": broker}
    }  # fmt: skip
    for cron_job in both.named("CronJob").values():
        (container,) = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert "K_SINK" not in env(container)
        assert ("CronJob", "*") in subjects
    if "minio-webhook" in both.services:
        (container,) = both.services["minio-webhook"]["spec"]["template"]["spec"]["containers"]
        assert "K_SINK" not in env(container)
        assert ("Service", "minio-webhook") in subjects
    if "mqtt-bridge" in both.named("Deployment") and both.values.sources.mqtt_bridge.sink is None:
        assert ("Deployment", "mqtt-bridge") in subjects
    for kind_name in ("PingSource", "KafkaSource"):
        for source in both.named(kind_name).values():
            if sink_of(source) is None:  # else a direct sink, test_the_same_kafka_sources
                assert source["spec"]["sink"]["ref"]["name"] == broker
