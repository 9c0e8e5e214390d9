"""The shared runtime of objectflow functions; it knows no domain.

Its public surface, for function modules:

    from functions.runtime import Event, Reply, cloudevent_function, http_function
    from functions.runtime import InvalidData, DependencyUnavailable, ...   # the error classes

plus the modules `clients` (one per backend, with the retry budget), `settings` (typed
connection settings) and `registry` (domains register their event types into it). Everything
else in this package is private. Names resolve on first use, so importing the package stays
cheap for processes that need only a part of it (sources, jobs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functions.runtime.adapter import Event, Reply, cloudevent_function
    from functions.runtime.errors import (
        BadEvent,
        BadRequest,
        DependencyUnavailable,
        InvalidData,
        NotFound,
        ObjectflowError,
        PayloadTooLarge,
        SettingsError,
        UnsupportedMediaType,
    )
    from functions.runtime.http import HttpFunction, http_function

__all__ = [
    "BadEvent",
    "BadRequest",
    "DependencyUnavailable",
    "Event",
    "HttpFunction",
    "InvalidData",
    "NotFound",
    "ObjectflowError",
    "PayloadTooLarge",
    "Reply",
    "SettingsError",
    "UnsupportedMediaType",
    "cloudevent_function",
    "http_function",
]
_MODULE = {"Event": "adapter", "Reply": "adapter", "cloudevent_function": "adapter",
           "HttpFunction": "http", "http_function": "http"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'functions.runtime' has no attribute {name!r}")
    module = importlib.import_module(f"functions.runtime.{_MODULE.get(name, 'errors')}")
    return getattr(module, name)
