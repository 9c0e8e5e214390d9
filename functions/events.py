"""The catalog: every CloudEvent type objectflow consumes or emits, with its data model.

Our own types are named `objectflow.<domain>.<what>.<version>`; upstream types keep their
names. The function adapter validates incoming `data` against the model registered here
before any side effect.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class EventData(BaseModel):
    """Base for event data: unknown fields are rejected so typos surface as 422s."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- echo: the runtime's reference function --------------------------------------------


class EchoRequest(EventData):
    message: str = Field(min_length=1, max_length=1000)


class EchoReply(EventData):
    message: str
    received: int = Field(description="How many distinct echo requests have been recorded")


@dataclass(frozen=True)
class EventType:
    name: str
    model: type[BaseModel]
    description: str


CATALOG: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType(
            "objectflow.echo.requested.v1",
            EchoRequest,
            "Ask the echo function to record a message and reply with it.",
        ),
        EventType(
            "objectflow.echo.replied.v1",
            EchoReply,
            "The echo function's reply to a request.",
        ),
    )
}
