"""The event catalog: every CloudEvent type objectflow consumes or emits, with its data model.

The runtime knows no domain: each domain registers its own types from its `events.py`

    register(EventType("objectflow.echo.requested.v1", EchoRequest, "Ask echo to ..."))

and a function module imports its domain's events before declaring what it accepts, so the
adapter finds the model of every type it validates. Our own types are named
`objectflow.<domain>.<what>.<version>`; upstream types keep their names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class EventData(BaseModel):
    """Base for event data: unknown fields are rejected so typos surface as 422s."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class EventType:
    name: str
    model: type[BaseModel]
    description: str


_CATALOG: dict[str, EventType] = {}
FUNCTIONS = Path(__file__).resolve().parent.parent


def register(*types: EventType) -> None:
    """Add event types to the catalog; a name registered with another model is an error."""
    for event_type in types:
        known = _CATALOG.get(event_type.name)
        if known is not None and _qualname(known.model) != _qualname(event_type.model):
            raise ValueError(
                f"event type {event_type.name} is registered twice: by "
                f"{_qualname(known.model)} and {_qualname(event_type.model)}"
            )
        _CATALOG[event_type.name] = event_type


def lookup(name: str) -> EventType | None:
    return _CATALOG.get(name)


def get(name: str) -> EventType:
    """The registered type `name`; a LookupError says where types come from."""
    found = _CATALOG.get(name)
    if found is None:
        raise LookupError(
            f"event type {name!r} is not registered; import the events module of its domain "
            "first (functions/<domain>/events.py)"
        )
    return found


def catalog() -> Mapping[str, EventType]:
    """The types registered so far (by the events modules this process imported)."""
    return dict(_CATALOG)


def load_all() -> Mapping[str, EventType]:
    """Import every `functions/<package>/events.py` and return the whole catalog (docs, tests)."""
    for package in pkgutil.iter_modules([str(FUNCTIONS)]):
        if package.ispkg and (FUNCTIONS / package.name / "events.py").exists():
            importlib.import_module(f"functions.{package.name}.events")
    return catalog()


def _qualname(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"
