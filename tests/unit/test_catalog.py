"""The event catalog: each domain registers its own types, and the diagram names only those."""

from __future__ import annotations

from typing import Any

import pytest

from devstack import wiring
from devstack.runtime.broker import describe, routes
from functions.runtime import registry
from functions.runtime.registry import EventType


def exact_types(expression: dict[str, Any]) -> set[str]:
    """Event types a filter expression requires (`exact` type, also inside `all`/`any`)."""
    ((dialect, body),) = expression.items()
    if dialect == "exact":
        return {body["type"]} if "type" in body else set()
    if dialect in ("all", "any"):
        return {t for nested in body for t in exact_types(nested)}
    return set()


def test_every_trigger_of_the_diagram_names_a_registered_type() -> None:
    catalog = registry.load_all()
    named = {
        (route["trigger"], event_type)
        for route in map(describe, routes(wiring.default()))
        for expression in route["filters"]
        for event_type in exact_types(expression)
    }
    assert named, "the diagram's triggers name no event type"
    unknown = sorted((trigger, t) for trigger, t in named if t not in catalog)
    assert unknown == [], f"triggers naming types no domain registers: {unknown}"


def test_each_domain_registers_its_own_types() -> None:
    catalog = registry.load_all()
    assert catalog["objectflow.camera.chunk.received.v1"].model.__module__ == (
        "functions.camera.events"
    )
    assert catalog["objectflow.echo.requested.v1"].model.__module__ == "functions.echo.events"
    assert catalog["dev.knative.sources.ping"].model.__module__ == "functions.sources.events"


def test_a_type_registered_twice_with_another_model_is_refused() -> None:
    from functions.camera.events import SweepReport

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(EventType("objectflow.camera.chunk.received.v1", SweepReport, "x"))


def test_an_unregistered_type_names_where_types_come_from() -> None:
    with pytest.raises(LookupError, match=r"functions/<domain>/events\.py"):
        registry.get("objectflow.nowhere.v1")
