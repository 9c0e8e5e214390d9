"""Event types of the OTA domain (docs/ota.md).

Every change to a job is one `job.<what>` event: a `job_events` row and an `event_outbox` row,
which the relay publishes to Kafka `job.events` as the record value below (key: the device id)
with CloudEvents headers of type `objectflow.ota.job.<what>.v1`. Consumers behind a KafkaSource
(the scheduler) receive them as those CloudEvents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from functions.runtime.registry import EventData, EventType, register

JobEventKind = Literal[
    "job.created", "job.updated", "job.cancelled", "job.ready_to_execute", "job.completed"
]
KINDS: tuple[str, ...] = JobEventKind.__args__  # type: ignore[attr-defined]
Outcome = Literal["done", "error", "timed_out"]  # of job.completed


def cloudevent_type(kind: str) -> str:
    """job.created -> objectflow.ota.job.created.v1"""
    return f"objectflow.ota.{kind}.v1"


class Schedule(EventData):
    """When a job is due: now, at a fixed instant, or at the next occurrence of a cron."""

    kind: Literal["now", "at", "cron"]
    due_at: datetime = Field(description="The instant the job becomes due (UTC)")
    cron: str | None = Field(default=None, description="Five-field cron, for kind cron")
    timezone: str | None = Field(default=None, description="IANA zone of the cron")


class JobEvent(EventData):
    """One change of a job: the Kafka record value on `job.events` and the CloudEvent data."""

    event_id: str
    type: JobEventKind
    job_id: str
    device_id: str
    firmware_version: str
    status: str
    version: int = Field(ge=1, description="The job's version after this change")
    schedule: Schedule
    occurred_at: datetime
    status_reason: str | None = None
    changes: dict[str, Any] = Field(default={}, description="For job.updated: the new values")
    outcome: Outcome | None = Field(
        default=None, description="For job.completed: how the job ended"
    )
    rollout_id: str | None = Field(default=None, description="The rollout the job belongs to")


# --- rollouts (the same outbox and topic; key: the rollout id) ------------------------------

RolloutEventKind = Literal[
    "rollout.created", "rollout.wave_started", "rollout.paused", "rollout.resumed",
    "rollout.cancelled", "rollout.completed",
]  # fmt: skip
ROLLOUT_KINDS: tuple[str, ...] = RolloutEventKind.__args__  # type: ignore[attr-defined]


class RolloutEvent(EventData):
    """One change of a rollout: the Kafka record value on `job.events` (key: rollout id)."""

    event_id: str
    type: RolloutEventKind
    rollout_id: str
    firmware_version: str
    status: Literal["running", "paused", "done", "cancelled"]
    version: int = Field(ge=1, description="The rollout's version after this change")
    wave: int = Field(ge=1, description="The latest wave started (1-based)")
    reason: str | None = None
    occurred_at: datetime
    detail: dict[str, Any] = Field(
        default={}, description="rollout.paused: `by`; rollout.cancelled: what it stopped"
    )


class RolloutsTicked(EventData):
    advanced: int = Field(ge=0, description="Running rollouts looked at in this tick")


# --- device statuses (Kafka device.status, keyed by device id; docs/ota.md) ------------------

DeviceStatusKind = Literal["downloading", "flashing", "done", "error"]
STATUS_KINDS: tuple[str, ...] = DeviceStatusKind.__args__  # type: ignore[attr-defined]


class DeviceStatus(EventData):
    """What a device publishes to `status/<device_id>/update` (QoS 1), as the bridge forwards
    it to `device.status`: its progress on the command `message_id` of job `job_id`."""

    job_id: str = Field(min_length=1, max_length=64)
    message_id: str = Field(
        min_length=1, max_length=128, description="The command's message id this answers"
    )
    status: DeviceStatusKind
    progress: int | None = Field(default=None, ge=0, le=100, description="Percent, downloading")
    error: str | None = Field(default=None, max_length=2000, description="Why, for status error")
    ts: datetime = Field(description="When the device reported it (ISO-8601 with offset)")


DlqReason = Literal[
    "not-json", "invalid", "no-device", "unknown-job", "wrong-device", "unknown-status",
    "never-dispatched",
]  # fmt: skip


class StatusDeadLetter(EventData):
    """A `device.status.dlq` record (key: the device id as it came): why ota-status refused the
    record, and the record itself to fix and replay (docs/ota.md, "Replay device.status.dlq")."""

    reason: DlqReason
    detail: str
    device_id: str | None = Field(description="The record's key")
    payload: str = Field(description="The record's value as it came (UTF-8, else base64)")
    payload_encoding: Literal["utf-8", "base64"]
    origin: str = Field(description="device.status partition and offset: `device.status/3@17`")
    refused_at: datetime


# --- device telemetry (Kafka device.telemetry, keyed by device id; docs/ota.md) -------------


class DeviceTelemetry(EventData):
    """A heartbeat a device publishes to `telemetry/<device_id>` (QoS 0 or 1), as the bridge
    forwards it to `device.telemetry`. Fields it does not know are ignored (newer firmware may
    report more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: datetime = Field(description="When the device sent it (ISO-8601 with offset)")
    firmware: str = Field(min_length=1, max_length=64, description="The firmware it runs")
    battery: float | None = Field(default=None, ge=0, le=100, description="Percent")
    signal: float | None = Field(
        default=None, ge=-200, le=200, description="Link quality as the device reports it, "
        "e.g. RSSI in dBm"
    )  # fmt: skip
    uptime_s: int | None = Field(default=None, ge=0, description="Seconds since it booted")

    @field_validator("battery", "signal", "uptime_s", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool | str):  # pydantic would take true and "42" as numbers
            raise ValueError("a JSON number")
        return value


TelemetryDlqReason = Literal["not-json", "invalid", "no-device", "unknown-device", "oversize"]


class TelemetryDeadLetter(EventData):
    """A `device.telemetry.dlq` record (key: the device id as it came): why ota-telemetry
    refused the heartbeat, and the record itself."""

    reason: TelemetryDlqReason
    detail: str
    device_id: str | None = Field(description="The record's key")
    payload: str = Field(description="The record's value as it came (UTF-8, else base64)")
    payload_encoding: Literal["utf-8", "base64"]
    origin: str = Field(description="device.telemetry partition and offset")
    refused_at: datetime


class SchedulerTicked(EventData):
    readied: int = Field(ge=0, description="Due jobs made ready in this tick")
    cache_rebuilt: bool = Field(description="The Redis due-time cache was rebuilt from PostgreSQL")


class DeadlinesChecked(EventData):
    redispatched: int = Field(ge=0, description="Silent jobs made ready again for a new command")
    timed_out: int = Field(ge=0, description="Silent jobs out of retries, now timed_out")


class OutboxPurged(EventData):
    deleted: int = Field(ge=0, description="Sent outbox rows older than the retention deleted")


register(
    EventType(
        cloudevent_type("job.created"),
        JobEvent,
        "A firmware job was created (subject: job id; Kafka job.events keyed by device id).",
    ),
    EventType(
        cloudevent_type("job.updated"),
        JobEvent,
        "A job was rescheduled or given another firmware (`changes` holds the new values).",
    ),
    EventType(cloudevent_type("job.cancelled"), JobEvent, "A job was cancelled before it ran."),
    EventType(
        cloudevent_type("job.ready_to_execute"),
        JobEvent,
        "A job became due: the scheduler moved it scheduled -> ready (the dispatcher's cue).",
    ),
    EventType(
        cloudevent_type("job.completed"),
        JobEvent,
        "A job finished: `outcome` done or error (the device said so) or timed_out (silent "
        "past its deadline with no retry left).",
    ),
    *(
        EventType(cloudevent_type(kind), RolloutEvent, text)
        for kind, text in (
            ("rollout.created", "A rollout was created; its first wave starts."),
            ("rollout.wave_started", "The previous wave passed its success threshold."),
            ("rollout.paused", "A rollout paused (`detail.by`: operator, abort or threshold)."),
            ("rollout.resumed", "An operator resumed a paused rollout."),
            ("rollout.cancelled", "An operator cancelled a rollout (`detail`: what stopped)."),
            ("rollout.completed", "Every wave of a rollout finished."),
        )
    ),
    EventType(
        "objectflow.ota.rollouts.ticked.v1",
        RolloutsTicked,
        "ota-rollouts finished a tick of the ota-rollouts-tick schedule.",
    ),
    EventType(
        "objectflow.ota.scheduler.ticked.v1",
        SchedulerTicked,
        "ota-scheduler finished a tick of the ota-scheduler-tick schedule.",
    ),
    EventType(
        "objectflow.ota.deadlines.checked.v1",
        DeadlinesChecked,
        "ota-deadlines finished a tick of the ota-deadlines schedule.",
    ),
    EventType(
        "objectflow.ota.outbox.purged.v1",
        OutboxPurged,
        "ota-outbox-purge deleted old sent outbox rows.",
    ),
)
