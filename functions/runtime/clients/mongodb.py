"""MongoDB (pymongo, served by FerretDB): only probed; no function keeps a client yet."""

from __future__ import annotations

from typing import Any

from functions.runtime import settings
from functions.runtime.clients import core


def _transient() -> tuple[type[BaseException], ...]:
    import pymongo.errors as e

    return (e.ConnectionFailure, e.ServerSelectionTimeoutError, e.AutoReconnect)


def _rejected(exc: BaseException) -> str | None:
    import pymongo.errors as e

    if isinstance(exc, e.OperationFailure) and exc.code in (13, 18):  # unauthorized, auth failed
        return "MONGODB_URI"
    return None


def _probe() -> None:
    import pymongo

    cfg = settings.mongo()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        cfg.uri.get_secret_value(), serverSelectionTimeoutMS=3000, connectTimeoutMS=2000
    )
    with client:
        client.admin.command("ping")


BACKEND = core.Backend("mongodb", _transient, _probe, rejected=_rejected)
