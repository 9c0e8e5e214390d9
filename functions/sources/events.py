"""Event types the source adapters emit: MinIO bucket notifications and schedule ticks."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from functions.runtime.registry import EventData, EventType, register

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
    size: int = Field(default=0, ge=0, description="MinIO leaves it out for an empty object")
    event_name: str = Field(pattern=r"^s3:ObjectCreated:")


class S3ObjectRemoved(S3ObjectEvent):
    event_name: str = Field(pattern=r"^s3:ObjectRemoved:")


# --- schedules: what a PingSource (or the chart's CronJob, or `objectflow tick`) sends --------


class Ping(BaseModel):
    """The schedule's `data` from values.yaml, whatever it holds (often nothing)."""

    model_config = ConfigDict(extra="allow", frozen=True)


# --- Kafka: what a KafkaSource sends for a record that is not itself a CloudEvent -----------


class KafkaRecord(RootModel[JsonValue]):
    """The record's value as JSON, whatever it holds; its key is the `key` extension. The
    consuming domain validates the shape (a value that is not JSON never gets this far)."""


register(
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
        "dev.knative.kafka.event",
        KafkaRecord,
        "A Kafka record (source: /apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>).",
    ),
    EventType(
        "dev.knative.sources.ping",
        Ping,
        "A schedule fired (source: /apis/v1/namespaces/<ns>/pingsources/<schedule>).",
    ),
)
