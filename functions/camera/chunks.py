"""Captures in Redis: chunks, camera sessions, the processed flag and the assembly lock.

The layout keeps source document 001's names (`image_chunks:<id>*`, `processed:<id>`,
`camera_session:<uid>`) and adds what a reset and a late chunk need:

    image_chunks:<image_id>          hash   chunk index -> chunk bytes (dropped once processed)
    image_chunks:<image_id>:meta     hash   camera_uid, total, top (highest index held),
                                            first_at, last_at
    image_chunks:<image_id>:digests  hash   chunk index -> sha1 of its bytes, kept once processed,
                                            so a late chunk is told a replay (same bytes) or a
                                            reuse of the image id (other bytes)
    image_chunks:<image_id>:events   set    the adapter's idempotency keys of the capture's chunks
                                            (`objectflow:handled:camera-ingest:*`), for a reset
    camera_session:<camera_uid>      string the capture in progress of a camera sending no image_id
    processed:<image_id>             string the object key: the capture is finished
    camera_lock:<image_id>           string the assembly lock (owner token + expiry, redis-py Lock)
    camera_captures                  zset   image_id -> last chunk time, what camera-sweep scans

A partial capture expires after the capture TTL; a complete one is kept much longer, so a capture
whose upload failed for a long time is still there for camera-sweep to finish. `reset` deletes
every key of one capture (`objectflow camera reset <image_id>`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

if TYPE_CHECKING:
    import redis

CAPTURES = "camera_captures"


def chunks_key(image_id: str) -> str:
    return f"image_chunks:{image_id}"


def meta_key(image_id: str) -> str:
    return f"image_chunks:{image_id}:meta"


def session_key(camera_uid: str) -> str:
    return f"camera_session:{camera_uid}"


def processed_key(image_id: str) -> str:
    return f"processed:{image_id}"


def digests_key(image_id: str) -> str:
    return f"image_chunks:{image_id}:digests"


def events_key(image_id: str) -> str:
    return f"image_chunks:{image_id}:events"


def lock_key(image_id: str) -> str:
    return f"camera_lock:{image_id}"


# One round trip, atomic, so duplicates and concurrent deliveries cannot interleave and a chunk
# is judged against the capture as it is. Delivery is ordered per camera, so without an image_id
# the chunk joins the camera's session unless something shows a new capture began: the session
# is finished, its total differs, it holds this index with other bytes, the index is below the
# highest one it holds (a lost chunk of its own would have come earlier), or this is index 0
# after the session was idle longer than the idle gap.
_STORE = """
local uid, given, fresh = ARGV[1], ARGV[2], ARGV[3]
local index, total, data = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local now, ttl, complete_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local idle, handled, handled_ttl = tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12])
local function joins(id)
  if redis.call('EXISTS', 'processed:' .. id) == 1 then return false end
  local m = redis.call('HMGET', 'image_chunks:' .. id .. ':meta', 'total', 'top', 'last_at')
  if not m[1] or tonumber(m[1]) ~= total then return false end
  if index == 0 and now - tonumber(m[3] or now) > idle then return false end
  local held = redis.call('HGET', 'image_chunks:' .. id, index)
  if held then return held == data end
  return index > tonumber(m[2] or -1)
end
-- The camera's last chunk again, right after its capture finished (a resend), stays with it;
-- only a last chunk can be that, as a new capture begins at index 0 (or is one chunk, equal).
local function repeats_last(id)
  if redis.call('EXISTS', 'processed:' .. id) == 0 then return false end
  local m = redis.call('HMGET', 'image_chunks:' .. id .. ':meta', 'total', 'last_at')
  if not m[1] or tonumber(m[1]) ~= total or index ~= total - 1 then return false end
  if index == 0 and now - tonumber(m[2] or now) > idle then return false end
  return redis.call('HGET', 'image_chunks:' .. id .. ':digests', index) == redis.sha1hex(data)
end
local image_id = given
if given == '' then
  image_id = redis.call('GET', KEYS[1])
  if not (image_id and (joins(image_id) or repeats_last(image_id))) then image_id = fresh end
end
local chunks, meta = 'image_chunks:' .. image_id, 'image_chunks:' .. image_id .. ':meta'
local function remember()
  if handled == '' then return end
  local events = chunks .. ':events'
  redis.call('SADD', events, handled)
  if redis.call('TTL', events) < handled_ttl then redis.call('EXPIRE', events, handled_ttl) end
end
local known = redis.call('HMGET', meta, 'camera_uid', 'total', 'top')
if known[1] and known[1] ~= uid then return {'other-camera', image_id, 0, 0} end
if known[2] and tonumber(known[2]) ~= total then
  return {'total-changed', image_id, 0, tonumber(known[2])}
end
if redis.call('EXISTS', 'processed:' .. image_id) == 1 then
  -- Finished: the same bytes again are a replay; other bytes reuse the image id.
  local digest = redis.call('HGET', chunks .. ':digests', index)
  if digest and digest ~= redis.sha1hex(data) then return {'conflict', image_id, 0, total} end
  remember()
  return {'processed', image_id, 0, 0}
end
local held = redis.call('HGET', chunks, index)
if held and held ~= data then return {'conflict', image_id, 0, total} end
if given == '' then redis.call('SET', KEYS[1], image_id, 'EX', ttl) end
redis.call('HSET', chunks, index, data)
redis.call('HSET', chunks .. ':digests', index, redis.sha1hex(data))
redis.call('HSET', meta, 'camera_uid', uid, 'total', total, 'last_at', ARGV[7],
           'top', math.max(index, tonumber(known[3] or -1)))
redis.call('HSETNX', meta, 'first_at', ARGV[7])
local received = redis.call('HLEN', chunks)
local expiry = ttl
if received == total then expiry = complete_ttl end
redis.call('EXPIRE', chunks, expiry)
redis.call('EXPIRE', meta, expiry)
redis.call('EXPIRE', chunks .. ':digests', expiry)
redis.call('ZADD', KEYS[2], now, image_id)
remember()
if held then return {'duplicate', image_id, received, total} end
return {'stored', image_id, received, total}
"""

# Finished: flag it, drop the chunk bytes but keep their digests and the small meta hash (for a
# late chunk and the status API). The camera's session keeps pointing here until its expiry, so
# a resend of the last chunk is known as one; any other chunk starts the next capture.
_MARK_PROCESSED = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[2] .. ':digests', ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
return 1
"""

# Forget a stale partial capture, and the camera's session if it points at it.
_DISCARD = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[1] .. ':digests')
redis.call('ZREM', KEYS[3], ARGV[1])
if KEYS[4] ~= '' and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"""

# Everything of one capture, atomically, so a chunk arriving meanwhile sees it whole or gone:
# its keys, the adapter's idempotency keys of its chunks, its sweep entry and the session of
# its camera if that points at it. Returns how many keys went.
_RESET = """
local id, chunks = ARGV[1], KEYS[1]
local uid = redis.call('HGET', chunks .. ':meta', 'camera_uid')
local gone = 0
for _, handled in ipairs(redis.call('SMEMBERS', chunks .. ':events')) do
  gone = gone + redis.call('DEL', handled)
end
gone = gone + redis.call('DEL', chunks, chunks .. ':meta', chunks .. ':digests',
                         chunks .. ':events', KEYS[2], KEYS[3])
gone = gone + redis.call('ZREM', KEYS[4], id)
if uid and redis.call('GET', 'camera_session:' .. uid) == id then
  gone = gone + redis.call('DEL', 'camera_session:' .. uid)
end
return gone
"""

Outcome = Literal["stored", "duplicate", "processed", "other-camera", "total-changed", "conflict"]


@dataclass(frozen=True)
class Stored:
    outcome: Outcome
    image_id: str
    received: int
    total: int  # for "total-changed": the total the capture already has

    @property
    def complete(self) -> bool:
        return self.outcome in ("stored", "duplicate") and self.received == self.total


@dataclass(frozen=True)
class Capture:
    """What Redis knows about one capture."""

    image_id: str
    camera_uid: str | None
    total: int | None
    received: list[int]
    first_at: float | None
    last_at: float | None
    processed_key: str | None  # the object key once the capture is finished

    @property
    def missing(self) -> list[int]:
        if self.total is None or self.processed_key is not None:
            return []
        have = set(self.received)
        return [i for i in range(self.total) if i not in have]

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.received) == self.total


class ChunkStore:
    """Plain domain code over a Redis client; every method is one or two round trips."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        capture_ttl: int,
        complete_ttl: int,
        session_idle: float,
        handled_ttl: int,
    ) -> None:
        self.redis = client
        self.capture_ttl = capture_ttl
        self.complete_ttl = complete_ttl
        self.session_idle = session_idle
        self.handled_ttl = handled_ttl
        self._store = client.register_script(_STORE)
        self._mark = client.register_script(_MARK_PROCESSED)
        self._discard = client.register_script(_DISCARD)
        self._reset = client.register_script(_RESET)

    def store(
        self,
        camera_uid: str,
        index: int,
        total: int,
        data: bytes,
        image_id: str | None,
        handled_key: str = "",
    ) -> Stored:
        """Keep one chunk; without `image_id` it joins (or starts) the camera's session.

        `handled_key` is the adapter's idempotency key of the chunk's event, listed with the
        capture so that a reset can forget it too."""
        outcome, found, received, known_total = self._store(
            keys=[session_key(camera_uid), CAPTURES],
            args=[
                camera_uid, image_id or "", str(uuid.uuid4()), index, total, data,
                f"{time.time():.6f}", self.capture_ttl, self.complete_ttl, self.session_idle,
                handled_key, self.handled_ttl,
            ],
        )  # fmt: skip
        return Stored(outcome.decode(), found.decode(), int(received), int(known_total))

    def chunks(self, image_id: str) -> dict[int, bytes]:
        found = cast(dict[bytes, bytes], self.redis.hgetall(chunks_key(image_id)))
        return {int(i): data for i, data in found.items()}

    def capture(self, image_id: str) -> Capture | None:
        """The capture's progress, or None when Redis has never heard of it (or forgot it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(meta_key(image_id))
        pipe.hkeys(chunks_key(image_id))
        pipe.get(processed_key(image_id))
        meta, indexes, processed = pipe.execute()
        if not meta and not indexes and processed is None:
            return None
        total = int(meta[b"total"]) if b"total" in meta else None
        received = sorted(int(i) for i in indexes)
        if processed is not None and total is not None:
            received = list(range(total))  # the bytes are gone, every chunk did arrive

        def moment(name: bytes) -> float | None:
            return float(meta[name]) if name in meta else None

        return Capture(
            image_id=image_id,
            camera_uid=meta[b"camera_uid"].decode() if b"camera_uid" in meta else None,
            total=total,
            received=received,
            first_at=moment(b"first_at"),
            last_at=moment(b"last_at"),
            processed_key=processed.decode() if processed is not None else None,
        )

    def mark_processed(self, image_id: str, object_key: str, keep_for: int) -> None:
        self._mark(
            keys=[processed_key(image_id), chunks_key(image_id), meta_key(image_id), CAPTURES],
            args=[object_key, keep_for, image_id],
        )

    def discard(self, image_id: str, camera_uid: str | None) -> None:
        session = session_key(camera_uid) if camera_uid else ""
        self._discard(
            keys=[chunks_key(image_id), meta_key(image_id), CAPTURES, session], args=[image_id]
        )

    def reset(self, image_id: str) -> int:
        """Delete every key of one capture (see the module docstring); how many there were."""
        keys = [chunks_key(image_id), processed_key(image_id), lock_key(image_id), CAPTURES]
        return int(self._reset(keys=keys, args=[image_id]))

    def forget(self, image_id: str) -> None:
        """Drop a capture from the sweep index (it was processed, or its keys are gone)."""
        self.redis.zrem(CAPTURES, image_id)

    def idle_since(self, before: float, limit: int) -> Iterator[str]:
        """Image ids whose last chunk arrived before `before`, oldest first."""
        members = self.redis.zrangebyscore(CAPTURES, "-inf", before, start=0, num=limit)
        for member in cast(list[bytes], members):
            yield member.decode()

    def lock(self, image_id: str, ttl: int) -> redis.lock.Lock:
        return self.redis.lock(lock_key(image_id), timeout=ttl, blocking=False)
