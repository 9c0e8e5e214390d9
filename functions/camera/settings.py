"""Settings of the camera pipeline, with the source documents' names where they exist.

Connection settings (Redis, MinIO, PostgreSQL, RabbitMQ) come from functions.runtime.settings;
these are the pipeline's own buckets and knobs, built lazily and cached like every settings object.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.runtime import settings


class CameraSettings(BaseSettings):
    """Limits and lifetimes of chunked captures (`CAMERA_*`)."""

    model_config = SettingsConfigDict(env_prefix="CAMERA_", extra="ignore")

    max_chunks: int = Field(default=1024, gt=0, description="Largest accepted `total`")
    max_chunk_bytes: int = Field(default=256 * 1024, gt=0, description="Largest decoded chunk")
    capture_ttl_s: int = Field(
        default=900, gt=0, description="A partial capture idle this long is stale (swept)"
    )
    complete_ttl_s: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="How long a complete but unprocessed capture waits for a retry",
    )
    processed_ttl_s: int = Field(
        default=7 * 24 * 3600, gt=0, description="How long `processed:<id>` dedupes late chunks"
    )
    lock_ttl_s: int = Field(default=60, gt=0, description="Expiry of the assembly lock")
    session_idle_seconds: float = Field(
        default=10,
        gt=0,
        description="After a session was idle this long, its camera's index 0 starts a new capture",
    )
    quarantine_prefix: str = Field(
        default="quarantine/",
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*/$",
        description="Key prefix in the raw bucket of captures that do not decode (never announced)",
    )
    sweep_grace_s: int = Field(
        default=30, ge=0, description="A complete capture younger than this is left to ingest"
    )
    sweep_batch: int = Field(default=500, gt=0)
    processed_status: Literal["processing", "completed"] = Field(
        default="processing", description="Status of an image once its processed object exists"
    )


class BucketSettings(BaseSettings):
    """The watched buckets (`MINIO_RAW_BUCKET`, `MINIO_PROCESSED_BUCKET`)."""

    model_config = SettingsConfigDict(env_prefix="MINIO_", extra="ignore")

    raw_bucket: str = "thermo-raw"
    processed_bucket: str = "thermo-processed"


class RoutingSettings(BaseSettings):
    """RabbitMQ routing keys of the watcher service (`RAW_ROUTING_KEY`, ...)."""

    model_config = SettingsConfigDict(extra="ignore")

    raw_routing_key: str = Field(default="raw.created", min_length=1)
    processed_routing_key: str = Field(default="processed.created", min_length=1)


class ReconcileSettings(BaseSettings):
    """Thresholds of the watcher service's reconciliation (`RECONCILE_*`).

    `RECONCILE_INTERVAL_MS` is replaced by the `camera-reconcile` schedule in values.yaml.
    """

    model_config = SettingsConfigDict(env_prefix="RECONCILE_", extra="ignore")

    pending_threshold_ms: int = Field(default=300_000, gt=0)
    processing_threshold_ms: int = Field(default=600_000, gt=0)
    max_republish: int = Field(
        default=5, ge=0, description="Re-publishes before an item is marked failed"
    )
    batch: int = Field(default=500, gt=0, description="Items examined per run")


camera = settings.cached(CameraSettings)
buckets = settings.cached(BucketSettings)
routing = settings.cached(RoutingSettings)
reconcile = settings.cached(ReconcileSettings)
