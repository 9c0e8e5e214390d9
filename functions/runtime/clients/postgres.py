"""PostgreSQL (psycopg2): one pool per process, each unit of work one transaction."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

from functions.runtime import settings
from functions.runtime.clients import core

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor
    from psycopg2.pool import ThreadedConnectionPool

T = TypeVar("T")
C = TypeVar("C", bound="Cursor")


def _transient() -> tuple[type[BaseException], ...]:
    import psycopg2

    return (psycopg2.OperationalError, psycopg2.InterfaceError)


def _rejected(exc: BaseException) -> str | None:
    text = str(exc)
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return settings.postgres().credential_settings
    if "database" in text and "does not exist" in text:
        return "DB_NAME"
    return None


@functools.cache
def _pool() -> ThreadedConnectionPool:
    from psycopg2.pool import ThreadedConnectionPool

    cfg = settings.postgres()
    # minconn=0: creating the pool never connects, so an outage surfaces on first use. Then
    # minconn is raised, because psycopg2 keeps only `minconn` idle connections: at 0 it closed
    # every connection it was given back, and each transaction paid for a new one.
    pool = ThreadedConnectionPool(0, cfg.pool_max, dsn=cfg.dsn, connect_timeout=3)
    pool.minconn = cfg.pool_max
    return pool


@functools.cache
def _slots() -> threading.BoundedSemaphore:
    """One per pooled connection: more concurrent transactions wait for one instead of
    failing with psycopg2's PoolError (an HTTP function serves many requests at once)."""
    return threading.BoundedSemaphore(settings.postgres().pool_max)


@contextlib.contextmanager
def _connection() -> Iterator[Connection]:
    """A pooled connection as one transaction: commit on success, roll back on error.

    A connection that broke (server restarted) is closed instead of returned to the pool, and
    the next transaction starts a new pool rather than meet the old one's stale connections.
    """
    import psycopg2

    pool = _pool()
    with _slots():
        conn = pool.getconn()
        broken = False
        try:
            yield conn
            conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise
        finally:
            pool.putconn(conn, close=broken or bool(conn.closed))
            if broken:  # the server went away: its other idle connections are stale too
                _pool.cache_clear()


@overload
def transaction(fn: Callable[[Cursor], T]) -> T: ...
@overload
def transaction(fn: Callable[[C], T], *, cursor_factory: type[C]) -> T: ...
def transaction(fn: Callable[[Any], T], *, cursor_factory: type[Cursor] | None = None) -> T:
    """`fn(cursor)` in one transaction on a pooled connection, within the retry budget.

    Commits when `fn` returns, rolls back when it raises, so whatever `fn` does besides SQL
    (a publish awaiting its confirm) happens before the commit and a failure undoes the rows.
    A transient failure retries the whole transaction on a fresh connection.
    """

    def attempt() -> T:
        with _connection() as conn, conn.cursor(cursor_factory=cursor_factory) as cur:
            return fn(cur)

    return core.within_budget(BACKEND, attempt)


def read(fn: Callable[[Cursor], T]) -> T:
    """`fn(cursor)` running one read-only statement in autocommit mode, within the retry budget.

    A lone statement is its own transaction: this saves `transaction`'s COMMIT round trip, which
    on a busy machine is also one more wait for the server to be scheduled (hot read paths).
    """

    def attempt() -> T:
        with _connection() as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    return fn(cur)
            finally:
                if not conn.closed:
                    conn.autocommit = False

    return core.within_budget(BACKEND, attempt)


def _probe() -> None:
    with _connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


BACKEND = core.Backend(
    "postgres",
    _transient,
    _probe,
    rejected=_rejected,
    caches=(_pool.cache_clear, _slots.cache_clear),
)
