"""echo — the reference CloudEvent function.

Consumes `objectflow.echo.requested.v1`, records the message in Redis exactly once per event
(`source` + `id`), and replies with `objectflow.echo.replied.v1`. Small on purpose: it shows
the shape every function follows — a plain domain function (`record`) and a thin adapter.

Served by functions-framework:
    functions-framework --source functions/echo/function.py --target echo
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions.echo.events import EchoReply, EchoRequest
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function

if TYPE_CHECKING:
    import redis

MESSAGES_KEY = "echo:messages"  # hash: event key -> message
RECEIVED_KEY = "echo:received"  # counter of distinct messages recorded

# One round trip, atomic: the hash field is the durable guard, so a duplicate delivery that
# slips past the adapter's pre-check still counts once.
_RECORD_ONCE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return redis.call('INCR', KEYS[2])
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""


def record(store: redis.Redis, event_key: str, message: str) -> int:
    """Record `message` under `event_key` once; return how many distinct messages exist."""
    return int(store.eval(_RECORD_ONCE, 2, MESSAGES_KEY, RECEIVED_KEY, event_key, message))


@cloudevent_function("echo", accepts=["objectflow.echo.requested.v1"])
def echo(event: Event[EchoRequest]) -> Reply:
    """Record the request's message and reply with it."""
    event_key = f"{event.source}#{event.id}"
    received = clients.redis.call(lambda r: record(r, event_key, event.data.message))
    return Reply(
        "objectflow.echo.replied.v1", EchoReply(message=event.data.message, received=received)
    )
