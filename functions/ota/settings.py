"""Settings of the OTA domain (`OTA_*`, `MINIO_FIRMWARE_BUCKET`).

Connection settings (PostgreSQL, MinIO, Redis, Kafka) come from functions.runtime.settings;
these are the domain's own limits and knobs, built lazily and cached like every settings object.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from functions.runtime import settings


class OtaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    firmware_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Largest upload")
    schedule_past_tolerance_s: float = Field(
        default=300, ge=0, description="A schedule_time this far in the past still means now"
    )
    mass_max_devices: int = Field(default=10_000, gt=0, description="Devices per mass update")
    firmware_signing_key: SecretStr | None = Field(
        default=None, description="ed25519 key (PEM or base64 seed) signing unsigned uploads"
    )
    firmware_public_key: str | None = Field(
        default=None, description="ed25519 key checking provided signatures (default: signer's)"
    )


class OutboxSettings(BaseSettings):
    """The relay and the purge (`OTA_OUTBOX_*`, `OTA_JOB_TOPIC`, `OTA_DLQ_TOPIC`)."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    outbox_backoff: Annotated[list[float], NoDecode] = Field(
        default=[1.0, 2.0, 4.0, 8.0],
        description="Seconds before each retry of a failed row (comma-separated); then job.dlq",
    )
    outbox_batch: int = Field(default=500, gt=0, le=10_000, description="Rows per lane and read")
    outbox_lanes: int = Field(
        default=16, gt=0, le=1024, description="Lanes (one relay at a time each); same everywhere"
    )
    outbox_poll_s: float = Field(default=1.0, gt=0, description="Fallback poll without NOTIFY")
    outbox_retention_days: float = Field(default=7, gt=0, description="Sent rows kept this long")
    outbox_purge_chunk: int = Field(default=1000, gt=0, description="Rows deleted per statement")
    outbox_dlq_payload_bytes: int = Field(
        default=4096, ge=0, description="Payload bytes a job.dlq record carries (then truncated)"
    )
    job_topic: str = Field(default="job.events", min_length=1)
    dlq_topic: str = Field(default="job.dlq", min_length=1)
    event_source: str = Field(default="/objectflow/ota", min_length=1, description="ce_source")

    @field_validator("outbox_backoff", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTA_SCHEDULER_", extra="ignore")

    batch: int = Field(default=200, gt=0, description="Due jobs readied per transaction")
    max_batches: int = Field(default=50, gt=0, description="Transactions per tick")
    cache_ttl_s: int = Field(
        default=300, gt=0, description="How long the Redis due-time cache is trusted unrebuilt"
    )


class DispatchSettings(BaseSettings):
    """ota-dispatcher: the command's link, the shared rate limit, the MQTT breaker."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    url_expiry_seconds: int = Field(
        default=3600, gt=0, le=7 * 24 * 3600, description="How long a command's link is valid"
    )
    dispatch_rate: int = Field(
        default=50, gt=0, description="Commands per second, shared by every dispatcher replica"
    )
    dispatch_rate_key: str = Field(
        default="ota:dispatch", min_length=1, description="Redis key of the shared rate limit"
    )
    mqtt_timeout_s: float = Field(default=5.0, gt=0, description="Wait for a command's PUBACK")
    breaker_failures: int = Field(
        default=5, gt=0, description="Failed publishes in a row that open the MQTT breaker"
    )
    breaker_reset_s: float = Field(
        default=30.0, gt=0, description="Open breaker's cool-down before it half-opens"
    )


class DeadlineSettings(BaseSettings):
    """ota-deadlines: how long a job may stay silent in each state, and its re-dispatches."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    timeout_dispatched: float = Field(
        default=600, gt=0, description="Seconds from the command to the device's first status"
    )
    timeout_downloading: float = Field(default=1800, gt=0, description="Seconds downloading")
    timeout_flashing: float = Field(default=900, gt=0, description="Seconds flashing")
    max_retries: int = Field(
        default=2, ge=0, description="Re-dispatches of a silent job before it is timed_out"
    )
    deadlines_batch: int = Field(default=200, gt=0, description="Overdue jobs per transaction")
    deadlines_max_batches: int = Field(default=50, gt=0, description="Transactions per tick")

    def timeout(self, status: str) -> float | None:
        """Seconds a job may stay silent in `status`; None for states without a deadline."""
        value = getattr(self, f"timeout_{status}", None)
        return None if value is None else float(value)


class StatusSettings(BaseSettings):
    """ota-status (`OTA_STATUS_*`)."""

    model_config = SettingsConfigDict(env_prefix="OTA_STATUS_", extra="ignore")

    dlq_topic: str = Field(default="device.status.dlq", min_length=1)
    dedup_ttl_s: int = Field(
        default=3600, gt=0, description="How long Redis remembers a handled status (fast path)"
    )
    lock_retries: int = Field(
        default=5, gt=0, description="Re-reads of a job that moved on meanwhile (optimistic lock)"
    )


class RolloutSettings(BaseSettings):
    """Rollouts (`OTA_ROLLOUT_*`): ota-api's limit and ota-rollouts' step sizes."""

    model_config = SettingsConfigDict(env_prefix="OTA_ROLLOUT_", extra="ignore")

    max_devices: int = Field(default=100_000, gt=0, description="Devices per rollout")
    batch: int = Field(default=500, gt=0, description="Jobs released per transaction")
    steps: int = Field(
        default=20, gt=0, description="Decisions per rollout and invocation (waves, releases)"
    )
    pace_s: float = Field(
        default=55.0, ge=0, description="How long a tick keeps stepping paced rollouts (s)"
    )
    pace_interval_s: float = Field(
        default=0.5, gt=0, description="Between those steps: the pace's granularity (s)"
    )


class TelemetrySettings(BaseSettings):
    """ota-telemetry and the rollouts' online gate (`OTA_ONLINE_WINDOW`, `OTA_TELEMETRY_*`)."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    online_window: float = Field(
        default=300,
        gt=0,
        description="Seconds since a device was last seen within which it counts as online "
        "(rollouts dispatch only to online devices); its telemetry is written at most once "
        "per half of it",
    )
    telemetry_dlq_topic: str = Field(default="device.telemetry.dlq", min_length=1)
    telemetry_max_bytes: int = Field(
        default=4096, gt=0, description="Largest heartbeat; a bigger one is dead-lettered"
    )


class ReportSettings(BaseSettings):
    """ota-reports (`OTA_REPORTS_*`): where analytical queries run and how long they may take."""

    model_config = SettingsConfigDict(env_prefix="OTA_REPORTS_", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, description="A read replica's DSN for the reports; empty: DATABASE_URL"
    )
    statement_timeout_ms: int = Field(
        default=15_000, gt=0, description="Each analytical statement's limit (then 503)"
    )
    cache_ttl_s: int = Field(
        default=300, gt=0, description="Cached PDFs and summaries live this long"
    )
    csv_batch: int = Field(default=2000, gt=0, le=100_000, description="Rows per cursor fetch")
    pool_max: int = Field(default=4, gt=0, description="Connections of the reports' own pool")
    api_url: str = Field(
        default="http://ota-api", min_length=1, description="ota-api's base URL (dashboard buttons)"
    )
    refresh_s: int = Field(default=5, gt=0, description="The dashboard pages' refresh period")


class BucketSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINIO_", extra="ignore")

    firmware_bucket: str = "firmware"


ota = settings.cached(OtaSettings)
outbox = settings.cached(OutboxSettings)
scheduler = settings.cached(SchedulerSettings)
dispatch = settings.cached(DispatchSettings)
deadlines = settings.cached(DeadlineSettings)
status = settings.cached(StatusSettings)
rollout = settings.cached(RolloutSettings)
telemetry = settings.cached(TelemetrySettings)
reports = settings.cached(ReportSettings)
buckets = settings.cached(BucketSettings)
