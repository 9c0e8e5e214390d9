"""The catalog: every CloudEvent type objectflow consumes or emits, with its data model.

Our own types are named `objectflow.<domain>.<what>.<version>`; upstream types keep their
names. The function adapter validates incoming `data` against the model registered here
before any side effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


# --- s3: MinIO bucket notifications, one event per object (functions/sources/minio_webhook) ---


class S3ObjectEvent(EventData):
    """One object in a MinIO bucket notification record."""

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, description="Object key, URL-decoded")
    size: int | None = Field(default=None, ge=0)
    etag: str | None = None
    content_type: str | None = None
    user_metadata: dict[str, str] = Field(
        default_factory=dict, description="x-amz-meta-* headers, prefix stripped, lower-case"
    )
    version_id: str | None = None
    sequencer: str | None = None
    event_name: str = Field(pattern=r"^s3:Object(Created|Removed):")
    event_time: datetime


class S3ObjectCreated(S3ObjectEvent):
    size: int = Field(ge=0)
    event_name: str = Field(pattern=r"^s3:ObjectCreated:")


class S3ObjectRemoved(S3ObjectEvent):
    event_name: str = Field(pattern=r"^s3:ObjectRemoved:")


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
        EventType(
            "objectflow.s3.object.created.v1",
            S3ObjectCreated,
            "An object was written to a watched MinIO bucket (subject: bucket/key).",
        ),
        EventType(
            "objectflow.s3.object.removed.v1",
            S3ObjectRemoved,
            "An object was deleted from a watched MinIO bucket (subject: bucket/key).",
        ),
    )
}
