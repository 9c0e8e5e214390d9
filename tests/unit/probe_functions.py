"""A function used only by the adapter's unit tests: its behaviour is chosen by the message."""

from __future__ import annotations

from functions.echo.events import EchoReply, EchoRequest
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.runtime.errors import DependencyUnavailable, InvalidData


@cloudevent_function("adapter-probe", accepts=["objectflow.echo.requested.v1"], idempotent=False)
def probe(event: Event[EchoRequest]) -> Reply | None:
    match event.data.message:
        case "no-reply":
            return None
        case "dependency-down":
            raise DependencyUnavailable("redis", "connection refused")
        case "domain-rule":
            raise InvalidData("message: not allowed here", field="message")
        case "crash":
            raise RuntimeError("secret internals")
    return Reply("objectflow.echo.replied.v1", EchoReply(message=event.data.message, received=1))
