"""MongoDB (pymongo; FerretDB locally): one client, connection failures retried like outages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from functions.runtime import settings
from functions.runtime.clients import core

if TYPE_CHECKING:
    import pymongo
    from pymongo.database import Database

T = TypeVar("T")


def _transient() -> tuple[type[BaseException], ...]:
    import pymongo.errors as e

    return (e.ConnectionFailure, e.ServerSelectionTimeoutError, e.AutoReconnect)


def _rejected(exc: BaseException) -> str | None:
    import pymongo.errors as e

    if isinstance(exc, e.OperationFailure) and exc.code in (13, 18):  # unauthorized, auth failed
        return "MONGODB_URI"
    return None


@functools.cache
def client() -> pymongo.MongoClient[dict[str, Any]]:
    """The process's client; short server selection so an outage surfaces within the budget."""
    import pymongo

    return pymongo.MongoClient(
        settings.mongo().uri.get_secret_value(),
        serverSelectionTimeoutMS=2000,
        connectTimeoutMS=2000,
        socketTimeoutMS=10000,
        tz_aware=True,
    )


def database() -> Database[dict[str, Any]]:
    """The database of MONGODB_URI (or MONGODB_DATABASE)."""
    return client()[settings.mongo().database_name]


def call(fn: Callable[[Database[dict[str, Any]]], T]) -> T:
    """`fn(database)` within the retry budget. `fn` is retried as a whole: make it idempotent."""
    return core.within_budget(BACKEND, lambda: fn(database()))


def _probe() -> None:
    client().admin.command("ping")


def _close() -> None:
    if client.cache_info().currsize:
        client().close()
    client.cache_clear()


BACKEND = core.Backend("mongodb", _transient, _probe, rejected=_rejected, caches=(_close,))
