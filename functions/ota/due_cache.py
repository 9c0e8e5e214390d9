"""The scheduler's cache of next due times in Redis (source document 002's schedule cache).

    ota:due          sorted set: job id -> due time (epoch seconds) of every scheduled job
    ota:due:built    set (with expiry) while ota:due is trusted to mirror PostgreSQL

PostgreSQL is the truth: the cache only spares the tick a query when nothing is due. When
`ota:due:built` is missing (Redis restarted, flushed, or the expiry passed) the tick rebuilds
the set from PostgreSQL, so an entry lost from Redis delays a job by at most one rebuild period.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

DUE = "ota:due"
BUILT = "ota:due:built"


def remember(r: Redis, job_id: str, due_at: float) -> None:
    r.zadd(DUE, {job_id: due_at})


def forget(r: Redis, *job_ids: str) -> None:
    if job_ids:
        r.zrem(DUE, *job_ids)


def is_built(r: Redis) -> bool:
    return bool(r.exists(BUILT))


def rebuild(r: Redis, due_times: dict[str, float], ttl_s: int) -> None:
    """Replace the set with `due_times` in one MULTI/EXEC: readers see old or new, never empty."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(DUE)
    if due_times:
        pipe.zadd(DUE, due_times)
    pipe.set(BUILT, 1, ex=ttl_s)
    pipe.execute()


def due_count(r: Redis, now: float) -> int:
    return int(r.zcount(DUE, "-inf", now))
