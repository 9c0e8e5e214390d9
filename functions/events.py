"""The catalog: every CloudEvent type objectflow consumes or emits, with its data model.

Our own types are named `objectflow.<domain>.<what>.<version>`; upstream types keep their
names. The function adapter validates incoming `data` against the model registered here
before any side effect.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


# --- schedules: what a PingSource (or the chart's CronJob, or `objectflow tick`) sends --------


class Ping(BaseModel):
    """The schedule's `data` from values.yaml, whatever it holds (often nothing)."""

    model_config = ConfigDict(extra="allow", frozen=True)


# --- camera: chunked images over MQTT (source document 001) ------------------------------------

# Usable as one object-key segment: no slash, no leading dot (so never "." or "..").
SAFE_SEGMENT = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"


class CameraChunk(BaseModel):
    """One MQTT message on `camera/<uid>/image_json`, as cameras send it today.

    Unknown fields are ignored (cameras send "at least" these), `data` is decoded from base64.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=SAFE_SEGMENT, description="Camera uid")
    index: int = Field(ge=0, strict=True, description="0-based chunk index")
    total: int = Field(ge=1, strict=True, description="Number of chunks in the capture")
    data: bytes = Field(description="The chunk, base64 in the payload")
    image_id: str | None = Field(default=None, pattern=SAFE_SEGMENT)

    @field_validator("data", mode="before")
    @classmethod
    def _base64(cls, value: Any) -> bytes:
        if not isinstance(value, str):
            raise ValueError("must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None

    @model_validator(mode="after")
    def _index_in_range(self) -> CameraChunk:
        if self.index >= self.total:
            raise ValueError(f"index {self.index} is outside 0..{self.total - 1}")
        return self


class ReconcileReport(EventData):
    checked: int = Field(ge=0)
    republished: int = Field(ge=0)
    failed: int = Field(ge=0)
    errors: int = Field(ge=0, description="Items skipped because a dependency failed")


class SweepReport(EventData):
    scanned: int = Field(ge=0)
    completed: int = Field(ge=0, description="Finished captures retried successfully")
    expired: int = Field(ge=0, description="Stale partial captures deleted")
    forgotten: int = Field(ge=0, description="Index entries of processed or vanished captures")
    errors: int = Field(ge=0, description="Retries that failed again (kept for the next sweep)")


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
        EventType(
            "dev.knative.sources.ping",
            Ping,
            "A schedule fired (source: /apis/v1/namespaces/<ns>/pingsources/<schedule>).",
        ),
        EventType(
            "objectflow.camera.chunk.received.v1",
            CameraChunk,
            "One chunk of a camera capture from MQTT camera/<uid>/image_json (subject: uid).",
        ),
        EventType(
            "objectflow.camera.reconciled.v1",
            ReconcileReport,
            "camera-reconcile finished a run over stuck image objects.",
        ),
        EventType(
            "objectflow.camera.swept.v1",
            SweepReport,
            "camera-sweep finished a run over unfinished captures in Redis.",
        ),
    )
}
