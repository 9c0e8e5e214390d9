"""Event types of the camera pipeline (docs/camera.md)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from functions.runtime.registry import EventData, EventType, register

# Usable as one object-key segment: ASCII, no slash, no leading dot (so never "." or "..").
# Match it with re.fullmatch: Python's `$` also matches before a trailing newline.
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
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
        if not decoded:
            raise ValueError("is empty: a chunk carries at least one byte")
        return decoded

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


register(
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
