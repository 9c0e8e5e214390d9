"""The wiring diagram: loading, validation, filter semantics, backoff, generated artefacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack import wiring
from devstack.runtime.broker import routes


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


def test_backoff_follows_the_policy() -> None:
    exponential = wiring.Delivery(backoff_delay="PT0.5S")
    assert [exponential.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    linear = wiring.Delivery(backoff_policy="linear", backoff_delay="PT1S")
    assert [linear.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]


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
    assert values.local.dead_letter_port == wiring.load().local.dead_letter_port
