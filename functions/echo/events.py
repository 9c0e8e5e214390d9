"""Event types of echo, the runtime's reference function."""

from __future__ import annotations

from pydantic import Field

from functions.runtime.registry import EventData, EventType, register


class EchoRequest(EventData):
    message: str = Field(min_length=1, max_length=1000)


class EchoReply(EventData):
    message: str
    received: int = Field(description="How many distinct echo requests have been recorded")


register(
    EventType(
        "objectflow.echo.requested.v1",
        EchoRequest,
        "Ask the echo function to record a message and reply with it.",
    ),
    EventType("objectflow.echo.replied.v1", EchoReply, "The echo function's reply to a request."),
)
