"""The wiring diagram: loading, validation, filter semantics, backoff, generated artefacts."""

from __future__ import annotations

import ast
import asyncio
import json
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cloudevents.http import CloudEvent

from devstack import config, wiring
from devstack.runtime import supervisor
from devstack.runtime.broker import Attempt, Broker, Route, routes

E2E = wiring.ROOT / "tests" / "e2e" / "values-e2e.yaml"
BENCH = wiring.ROOT / "bench" / "values-bench.yaml"


def test_values_yaml_loads_and_every_function_has_a_port() -> None:
    values = wiring.load()
    assert "echo" in values.functions
    assert set(values.function_ports()) == set(values.functions)


def test_schema_file_is_generated_from_the_model() -> None:
    assert json.loads(wiring.SCHEMA.read_text()) == wiring.json_schema(), (
        "values.schema.json is stale: run `uv run objectflow schema`"
    )


def test_catalog_in_functions_readme_is_up_to_date() -> None:
    readme = (wiring.ROOT / "functions" / "README.md").read_text()
    assert wiring.catalog_markdown(wiring.default()) in readme, (
        "functions/README.md is stale: run `uv run objectflow catalog --write`"
    )


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(wiring.SCHEMA.read_text()))
    return [error.message for error in validator.iter_errors(document)]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"functions": {"echo": {"entrypoint": "f.py:echo", "colour": "red"}}}, "colour"),
        ({"delivery": {"retry": "five"}}, "five"),
        ({"delivery": {"backoff-policy": "random"}}, "random"),
        ({"unknown-top-level": 1}, "unknown-top-level"),
        ({"functions": {"x": {"entrypoint": "f.py:x", "triggers": [{"name": "t"}]}}}, "filters"),
    ],
)
def test_schema_and_loader_reject_unknown_keys_and_wrong_types(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    assert any(message in error for error in schema_errors(document))
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(document))
    with pytest.raises(wiring.WiringError):
        wiring.load(overlay)


@pytest.mark.parametrize(
    "document",
    [
        {"schedules": {"nightly": {"cron": "not a cron"}}},
        {"schedules": {"nightly": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}},
        {"delivery": {"backoff-delay": "soon"}},
        {"functions": {"Bad_Name": {"entrypoint": "f.py:x"}}},
    ],
)
def test_loader_rejects_bad_cron_zone_duration_and_names(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(document))
    with pytest.raises(wiring.WiringError):
        wiring.load(overlay)


def f(expression: dict[str, Any]) -> wiring.Filter:
    return wiring.Filter.model_validate(expression)


@pytest.mark.parametrize(
    ("expression", "attributes", "expected"),
    [
        ({"exact": {"type": "a.b"}}, {"type": "a.b"}, True),
        ({"exact": {"type": "a.b"}}, {"type": "a.bc"}, False),
        ({"exact": {"type": "a.b", "source": "/s"}}, {"type": "a.b"}, False),
        ({"prefix": {"type": "objectflow.camera."}}, {"type": "objectflow.camera.x"}, True),
        ({"prefix": {"type": "objectflow.camera."}}, {"type": "objectflow.cam"}, False),
        ({"suffix": {"subject": ".jpg"}}, {"subject": "cam/1.jpg"}, True),
        ({"suffix": {"subject": ".jpg"}}, {}, False),
        ({"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}, {"type": "b"}, True),
        ({"all": [{"prefix": {"type": "a"}}, {"suffix": {"type": "z"}}]}, {"type": "az"}, True),
        ({"not": {"exact": {"type": "a"}}}, {"type": "b"}, True),
        ({"exact": {"partitionkey": "7"}}, {"partitionkey": 7}, True),  # extensions compare as text
    ],
)
def test_filter_dialects(
    expression: dict[str, Any], attributes: dict[str, Any], expected: bool
) -> None:
    assert f(expression).matches(attributes) is expected


def test_a_filter_needs_exactly_one_dialect() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        f({"exact": {"type": "a"}, "prefix": {"type": "b"}})


def test_backoff_follows_the_policy_of_the_broker_class() -> None:
    """MT: eventing pkg/kncloudevents/retries.go (delay·2^i, delay·i, i from 0); Kafka broker:
    delay·2^n, delay·n, n from 1. Neither adds jitter."""
    exponential = wiring.Delivery(backoff_delay="PT0.5S")
    assert [exponential.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert [exponential.delay(n, "Kafka") for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    linear = wiring.Delivery(backoff_policy="linear", backoff_delay="PT1S")
    assert [linear.delay(n) for n in (1, 2, 3)] == [0.0, 1.0, 2.0]
    assert [linear.delay(n, "Kafka") for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert wiring.Delivery().window() == pytest.approx(6.2)  # 0.2 + 0.4 + 0.8 + 1.6 + 3.2
    assert wiring.Delivery().window("Kafka") == pytest.approx(12.4)


@pytest.mark.parametrize("name", ["Type", "partition-key", "9lives", "ce_id", ""])
def test_filter_attribute_names_are_what_knative_admits(name: str) -> None:
    """eventing pkg/apis/eventing/v1/trigger_validation.go `ValidateAttributesNames`:
    `^[a-z][a-z0-9]*$`, refused by the wiring model (and values.schema.json), not at install."""
    with pytest.raises(ValueError, match="attribute names"):
        f({"exact": {name: "x"}})
    assert schema_errors(
        {"functions": {"x": {"entrypoint": "f.py:x", "triggers": [
            {"name": "t", "filters": [{"prefix": {name: "x"}}]}]}}}
    )  # fmt: skip


@pytest.mark.parametrize(
    "expression",
    [{"exact": {"type": ""}}, {"prefix": {"subject": "", "type": "a"}}, {"any": []}],
)
def test_a_filter_knative_cannot_build_matches_everything(expression: dict[str, Any]) -> None:
    """MaterializeFiltersList (eventing pkg/broker/filter) skips it."""
    assert f(expression).matches({"type": "other", "subject": "s"})


def test_trigger_delivery_overrides_the_default(tmp_path: Path) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({
        "functions": {"x": {"entrypoint": "f.py:x", "triggers": [
            {"name": "t", "filters": [{"exact": {"type": "t"}}], "delivery": {"retry": 1}},
        ]}},
    }))  # fmt: skip
    values = wiring.load(overlay)
    route = next(r for r in routes(values) if r.trigger.name == "t")
    assert route.delivery.retry == 1
    assert route.delivery.backoff_delay == values.delivery.backoff_delay


def test_overlays_merge_like_helm(tmp_path: Path) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"local": {"broker-port": 18080}}))
    values = wiring.load(overlay)
    assert values.local.broker_port == 18080
    assert values.local.function_port_base == wiring.load().local.function_port_base


def load_with(tmp_path: Path, document: dict[str, Any], *more: Path) -> wiring.Values:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(document))
    return wiring.load(*more, overlay)


def ticked(schedule: str, *filters: dict[str, Any]) -> dict[str, Any]:
    """A function with one trigger on `schedule`."""
    trigger: dict[str, Any] = {"name": "t", "schedule": schedule}
    if filters:
        trigger["filters"] = list(filters)
    return {"functions": {"x": {"entrypoint": "f.py:x", "triggers": [trigger]}}}


# --- schedule triggers -------------------------------------------------------------------


def test_a_schedule_trigger_routes_that_schedules_ping_events_in_the_namespace() -> None:
    values = wiring.load()
    (route,) = [r for r in routes(values) if r.trigger.name == "camera-sweep-tick"]
    ping = {"type": "dev.knative.sources.ping", "id": "1"}
    source = "/apis/v1/namespaces/objectflow/pingsources/camera-sweep"
    assert [f.model_dump(exclude_none=True) for f in route.trigger.filters] == [
        {"exact": {"type": wiring.PING_TYPE, "source": source}}
    ]
    assert route.trigger.matches({**ping, "source": source})
    assert not route.trigger.matches({**ping, "source": source.replace("sweep", "reconcile")})
    assert not route.trigger.matches({**ping, "source": source.replace("objectflow", "staging")})


def test_the_namespace_of_the_expansion_is_the_values_one(tmp_path: Path) -> None:
    values = load_with(tmp_path, {"namespace": "staging"})
    (route,) = [r for r in routes(values) if r.trigger.name == "camera-reconcile-tick"]
    assert route.trigger.filters[0].exact == {
        "type": wiring.PING_TYPE,
        "source": "/apis/v1/namespaces/staging/pingsources/camera-reconcile",
    }


def test_filters_beside_a_schedule_narrow_it(tmp_path: Path) -> None:
    values = load_with(
        tmp_path,
        {"schedules": {"nightly": {"cron": "0 3 * * *"}}}
        | ticked("nightly", {"exact": {"subject": "only-this"}}),
    )
    (route,) = [r for r in routes(values) if r.function == "x"]
    source = "/apis/v1/namespaces/objectflow/pingsources/nightly"
    ping = {"type": wiring.PING_TYPE, "source": source}
    assert len(route.trigger.filters) == 2
    assert route.trigger.matches({**ping, "subject": "only-this"})
    assert not route.trigger.matches(ping)


def test_an_unknown_schedule_is_a_wiring_error(tmp_path: Path) -> None:
    with pytest.raises(wiring.WiringError, match="schedule 'nigthly' is not a key of `schedules`"):
        load_with(tmp_path, ticked("nigthly"))


@pytest.mark.parametrize(
    "source",
    [
        "/apis/v1/namespaces/objectflow/pingsources/nowhere",  # no such schedule
        "/apis/v1/namespaces/elsewhere/pingsources/camera-sweep",  # not the values' namespace
    ],
)
def test_a_hand_written_ping_filter_must_name_a_declared_schedule(
    tmp_path: Path, source: str
) -> None:
    ping = {"exact": {"type": wiring.PING_TYPE, "source": source}}
    document = {"functions": {"x": {"entrypoint": "f.py:x", "triggers": [
        {"name": "t", "filters": [{"any": [ping, {"exact": {"type": "other"}}]}]},
    ]}}}  # fmt: skip
    with pytest.raises(wiring.WiringError, match="write `schedule: <name>` instead"):
        load_with(tmp_path, document)


def test_no_shipped_trigger_spells_out_a_ping_filter() -> None:
    for overlays in ((), (E2E,)):
        values = wiring.load(*overlays)
        for function in values.functions.values():
            for trigger in function.triggers:
                assert not wiring._ping_sources(trigger.filters), trigger.name


def test_a_trigger_needs_filters_or_a_schedule() -> None:
    with pytest.raises(ValueError, match="needs `filters` or `schedule`"):
        wiring.Trigger.model_validate({"name": "t"})
    assert schema_errors(ticked("camera-sweep")) == []


# --- ports ----------------------------------------------------------------------------------


def test_ports_are_declared_or_derived_from_the_name() -> None:
    values = wiring.load(E2E)
    ports = values.ports()
    assert ports["dead-letter"] == 8091 and ports["minio-webhook"] == 8090
    for name in values.functions:
        assert ports[name] == 10000 + zlib.crc32(name.encode()) % wiring.PORT_SPAN
    assert len(set(ports.values())) == len(ports)
    assert (
        max(ports.values()) < 32768
    )  # below the ephemeral ports, above every service of the stack


def test_inserting_a_function_moves_no_other_port(tmp_path: Path) -> None:
    before = wiring.load(E2E).ports()
    first = {"functions": {"aaa-new": {"entrypoint": "f.py:x"}}}
    # Prepended: the new function comes first in the diagram's order.
    raw = yaml.safe_load(wiring.VALUES.read_text())
    raw["functions"] = {"aaa-new": first["functions"]["aaa-new"], **raw["functions"]}
    base = tmp_path / "values.yaml"
    base.write_text(yaml.safe_dump(raw, sort_keys=False))
    after = wiring.load(E2E, base=base).ports()
    assert next(iter(after)) == "aaa-new"
    assert {name: after[name] for name in before} == before


def test_a_port_collision_asks_for_a_local_port(tmp_path: Path) -> None:
    echo = wiring.load().ports()["echo"]
    with pytest.raises(wiring.WiringError, match="declare `local-port`"):
        load_with(tmp_path, {"functions": {"x": {"entrypoint": "f.py:x", "local-port": echo}}})
    values = load_with(tmp_path, {"functions": {"x": {"entrypoint": "f.py:x", "local-port": 8099}}})
    assert values.ports()["x"] == 8099


# --- the platform -----------------------------------------------------------------------------


def served_entrypoints(values: wiring.Values) -> dict[str, str]:
    found = {}
    for component in supervisor.components(values):
        if "--source" in component.command:
            args = component.command
            source = Path(args[args.index("--source") + 1]).relative_to(wiring.ROOT)
            found[component.name] = f"{source}:{args[args.index('--target') + 1]}"
    return found


def test_the_runtime_starts_the_platform_components_the_values_declare(tmp_path: Path) -> None:
    values = wiring.load()
    raw = yaml.safe_load(wiring.VALUES.read_text())["platform"]
    served = served_entrypoints(values)
    assert served["dead-letter"] == raw["dead-letter"]["entrypoint"]
    assert served["minio-webhook"] == raw["minio-webhook"]["entrypoint"]
    moved = load_with(tmp_path, {"platform": {"dead-letter": {"entrypoint": "x/y.py:store"}}})
    assert served_entrypoints(moved)["dead-letter"] == "x/y.py:store"
    no_minio = load_with(tmp_path, {"sources": {"minio": {"buckets": []}}})
    assert "minio-webhook" not in served_entrypoints(no_minio)


def test_http_components_run_under_asgi_and_cloudevent_ones_do_not() -> None:
    values = wiring.load()
    for component in supervisor.components(values):
        if "--source" not in component.command:
            continue
        kind = values.served()[component.name].kind
        assert ("--asgi" in component.command) == (kind == "http"), component.name
    asgi = {c.name for c in supervisor.components(values) if "--asgi" in c.command}
    assert {"camera-api", "dead-letter", "minio-webhook"} <= asgi


def test_dead_lettering_needs_the_dead_letter_component(tmp_path: Path) -> None:
    raw = yaml.safe_load(wiring.VALUES.read_text())
    del raw["platform"]["dead-letter"]
    base = tmp_path / "values.yaml"
    base.write_text(yaml.safe_dump(raw))
    with pytest.raises(wiring.WiringError, match=r"platform\.dead-letter is not declared"):
        wiring.load(base=base)


def test_minio_webhook_listens_where_minio_notifies(tmp_path: Path) -> None:
    env = config.STACK.minio_env(config.Paths(state=tmp_path))
    endpoint = env[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{config.MINIO_WEBHOOK_TARGET}"]
    assert endpoint == f"http://{config.HOST}:{wiring.default().ports()['minio-webhook']}/"


# --- every entrypoint exists ---------------------------------------------------------------------


def module_names(path: Path) -> set[str]:
    """Names a module binds at its top level (def, class, assignment, import)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


OVERLAYS = {"default": (), "e2e": (E2E,), **({"bench": (BENCH,)} if BENCH.exists() else {})}


@pytest.mark.parametrize("overlays", OVERLAYS.values(), ids=OVERLAYS.keys())
def test_every_entrypoint_file_and_target_exists(overlays: tuple[Path, ...]) -> None:
    values = wiring.load(*overlays)
    served = {**values.functions}
    for name in ("dead_letter", "minio_webhook"):
        component = getattr(values.platform, name)
        if component is not None:
            served[name] = component
    for name, component in served.items():
        path = wiring.ROOT / component.source
        assert path.is_file(), f"{name}: {component.source} does not exist"
        assert component.target in module_names(path), (
            f"{name}: {component.source} defines no `{component.target}` at module level"
        )


def test_the_entrypoint_check_catches_a_missing_target(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def handler(event):\n    pass\napp = object()\n")
    assert {"handler", "app"} <= module_names(module)
    assert "missing" not in module_names(module)


# --- infrastructure from the domains --------------------------------------------------------------


def test_infrastructure_is_what_the_domains_and_kafka_sources_declare(tmp_path: Path) -> None:
    values = wiring.load()
    assert values.infrastructure() == wiring.Infrastructure(
        buckets={
            "MINIO_RAW_BUCKET": "thermo-raw",
            "MINIO_PROCESSED_BUCKET": "thermo-processed",
            "MINIO_PRODUCT_BUCKET": "product-images",
            "MINIO_DETECTIONS_BUCKET": "detections",
            "MINIO_FIRMWARE_BUCKET": "firmware",
        },
        topics={
            "product.created": 3,
            "product.deleted": 3,
            "job.events": 6,
            "job.dlq": 1,
            "device.status": 6,
            "device.status.dlq": 1,
            "device.telemetry": 6,
            "device.telemetry.dlq": 1,
        },
        collections=("runner_predictions",),
    )
    more = load_with(
        tmp_path,
        {
            "domains": {
                "shop": {"buckets": {"MINIO_SHOP_BUCKET": "shop-images"},
                         "topics": {"product.created": 5, "e2e.events": 6},
                         "collections": ["orders"]},
                "other": {"topics": {"product.created": 1}, "collections": ["orders", "x"]},
            },
        },
        E2E,
    )  # fmt: skip
    infrastructure = more.infrastructure()
    assert infrastructure.buckets == {
        "MINIO_RAW_BUCKET": "thermo-raw",
        "MINIO_PROCESSED_BUCKET": "thermo-processed",
        "MINIO_DETECTIONS_BUCKET": "detections",
        "MINIO_FIRMWARE_BUCKET": "firmware",
        "MINIO_PRODUCT_BUCKET": "product-images",
        "MINIO_SHOP_BUCKET": "shop-images",
    }
    # the largest partition count wins; a Kafka source's topic no domain declares gets 3
    assert infrastructure.topics == {
        "product.created": 5, "product.deleted": 3, "job.events": 6, "job.dlq": 1,
        "device.status": 6, "device.status.dlq": 1, "device.telemetry": 6,
        "device.telemetry.dlq": 1, "e2e.events": 6,
    }  # fmt: skip
    assert infrastructure.collections == ("runner_predictions", "orders", "x")
    assert wiring.load(E2E).infrastructure().topics["e2e.events"] == 3


def test_two_domains_may_not_give_one_bucket_env_two_buckets(tmp_path: Path) -> None:
    with pytest.raises(wiring.WiringError, match="MINIO_RAW_BUCKET"):
        load_with(tmp_path, {"domains": {"other": {"buckets": {"MINIO_RAW_BUCKET": "elsewhere"}}}})


def test_the_env_file_holds_the_domains_buckets_and_no_others(tmp_path: Path) -> None:
    paths = config.Paths(state=tmp_path / "state")
    config.STACK.write_files(paths)
    env = config.read_env_file(paths)
    assert env["MINIO_RAW_BUCKET"] == "thermo-raw"
    assert env["MINIO_PROCESSED_BUCKET"] == "thermo-processed"
    assert {k for k in env if k.endswith("_BUCKET")} == {
        "MINIO_RAW_BUCKET", "MINIO_PROCESSED_BUCKET", "MINIO_PRODUCT_BUCKET",
        "MINIO_DETECTIONS_BUCKET", "MINIO_FIRMWARE_BUCKET",
    }  # fmt: skip


def test_the_services_provision_exactly_the_infrastructure() -> None:
    from devstack.services import specs

    infrastructure = wiring.Infrastructure(
        buckets={"A_BUCKET": "bucket-a"}, topics={"t.one": 2}, collections=("c",)
    )
    services = specs(infrastructure=infrastructure)
    assert services["kafka"].provision_inputs == {"t.one": 2}
    assert services["minio"].provision_inputs[0] == ["bucket-a"]
    assert services["ferretdb"].provision_inputs[2:] == ["c"]
    default = specs()
    declared = wiring.default().infrastructure()  # what values.yaml's domains declare
    assert default["kafka"].provision_inputs == declared.topics
    assert default["minio"].provision_inputs[0] == declared.bucket_names


# --- the broker's retry waits --------------------------------------------------------------------


@pytest.mark.parametrize(
    "delivery",
    [
        wiring.Delivery(retry=4, backoff_delay="PT0.5S"),
        wiring.Delivery(retry=3, backoff_policy="linear", backoff_delay="PT1S"),
    ],
    ids=["exponential", "linear"],
)
@pytest.mark.parametrize("broker_class", ["MTChannelBasedBroker", "Kafka"])
def test_the_broker_waits_the_class_delay_without_jitter(
    delivery: wiring.Delivery, broker_class: wiring.BrokerClass
) -> None:
    trigger = wiring.Trigger(name="t", filters=[wiring.Filter(exact={"type": "t"})])
    route = Route(trigger, "f", "http://127.0.0.1:9/", delivery)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def unavailable(*_args: object) -> Attempt:
        return Attempt(status=503)

    broker = Broker([route], dead_letter_url=None, sleep=sleep, broker_class=broker_class)
    broker._send = unavailable  # type: ignore[method-assign]
    event = CloudEvent({"type": "t", "source": "/s"}, {})
    asyncio.run(broker._deliver_now(route, event, ({}, b""), 0.0))
    assert waits == [delivery.delay(n, broker_class) for n in range(1, delivery.retry + 1)]
