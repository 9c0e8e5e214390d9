"""Clients of the services functions depend on, one module per service.

Each module keeps together what the runtime knows of its service: which failures are
transient, which setting a rejection points at, its cached client (built on first use; the
client library is imported only then, so a function loads just the clients it uses), helpers
that run a call within the retry budget (`core`), and its probe for `objectflow check`.

Use them as `clients.postgres.transaction(...)`, `clients.redis.call(...)`: the modules are
named after the services, and `import redis` elsewhere still means the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from functions.runtime.clients import kafka, mongodb, mqtt, postgres, rabbitmq, redis, s3
from functions.runtime.clients.core import Backend, Dependency, within_budget

T = TypeVar("T")

BACKENDS: dict[Dependency, Backend] = {
    backend.name: backend
    for backend in (
        postgres.BACKEND,
        redis.BACKEND,
        s3.BACKEND,
        rabbitmq.BACKEND,
        kafka.BACKEND,
        mqtt.BACKEND,
        mongodb.BACKEND,
    )
}


def call(dependency: Dependency, fn: Callable[[], T]) -> T:
    """Run `fn` against `dependency` within the retry budget (see `core`)."""
    return within_budget(BACKENDS[dependency], fn)


def probe(dependency: Dependency) -> None:
    """One real request to `dependency`; raises SettingsError or DependencyUnavailable."""
    call(dependency, BACKENDS[dependency].probe)


def reset() -> None:
    """Drop every cached client (tests switch environments and restart services)."""
    for backend in BACKENDS.values():
        for cache_clear in backend.caches:
            cache_clear()
