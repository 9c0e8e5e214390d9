"""Fast duplicate detection keyed by CloudEvent `source` + `id`.

This is only the pre-check: a redelivered event that was already handled is answered at once
without touching the domain. The durable guard stays in the domain write (upserts, unique
keys, guarded transitions), because two copies can arrive at the same moment, and because
Redis may be unavailable: then the pre-check is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import logging

from functions.runtime import clients, settings

log = logging.getLogger("objectflow.idempotency")


def key(function: str, source: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{source}\x00{event_id}".encode()).hexdigest()[:32]
    return f"objectflow:handled:{function}:{digest}"


def already_handled(function: str, source: str, event_id: str) -> bool:
    try:
        return bool(clients.redis.client().exists(key(function, source, event_id)))
    except Exception as exc:
        log.warning("idempotency pre-check skipped: redis unavailable", extra={"error": repr(exc)})
        return False


def remember(function: str, source: str, event_id: str) -> None:
    try:
        ttl = settings.runtime().idempotency_ttl
        clients.redis.client().set(key(function, source, event_id), 1, ex=ttl)
    except Exception as exc:
        log.warning("idempotency mark skipped: redis unavailable", extra={"error": repr(exc)})
