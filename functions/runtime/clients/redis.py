"""Redis (redis-py): one client per process; its own retries are off, the budget is ours.

`import redis` below is the redis-py library (imports are absolute), not this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from functions.runtime import settings
from functions.runtime.clients import core

if TYPE_CHECKING:
    import redis as redis_lib

T = TypeVar("T")


def _transient() -> tuple[type[BaseException], ...]:
    import redis.exceptions as e

    return (e.ConnectionError, e.TimeoutError, e.BusyLoadingError)


def _rejected(exc: BaseException) -> str | None:
    import redis.exceptions as e

    if isinstance(exc, e.AuthenticationError | e.AuthenticationWrongNumberOfArgsError):
        return "REDIS_PASSWORD"
    if isinstance(exc, e.ResponseError) and "NOAUTH" in str(exc):
        return "REDIS_PASSWORD"
    return None


@functools.cache
def client() -> redis_lib.Redis:
    """The process's client (no retries of its own: use `call` for the budget)."""
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    cfg = settings.redis()
    return redis_lib.Redis(
        host=cfg.host,
        port=cfg.port,
        db=cfg.db,
        password=cfg.password.get_secret_value() if cfg.password else None,
        socket_timeout=5,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),  # the retry budget lives in `call`, not in the client
        health_check_interval=30,
    )


def call(fn: Callable[[redis_lib.Redis], T]) -> T:
    """`fn(client)` within the retry budget."""
    return core.within_budget(BACKEND, lambda: fn(client()))


BACKEND = core.Backend(
    "redis",
    _transient,
    lambda: client().ping(),
    rejected=_rejected,
    caches=(client.cache_clear,),
)
