"""Settings of the detections outbox (`DETECTIONS_*`), shared by the source and the functions.

Connection settings (MONGODB_URI, MinIO) come from functions.runtime.settings.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.detections.events import COLLECTION
from functions.runtime import settings


class DetectionsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETECTIONS_", extra="ignore")

    collection: str = Field(
        default="runner_predictions",
        pattern=COLLECTION,
        description="The outbox collection detections-reconcile watches (MONGODB_URI's database)",
    )
    poll_interval: float = Field(
        default=0.5, gt=0, description="Seconds between scans where there is no change stream"
    )
    lease_seconds: float = Field(
        default=60,
        gt=0,
        description="A claim expires, and the source posts a document again, after this",
    )
    max_prediction_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest canonical JSON accepted"
    )
    stuck_after_seconds: float = Field(
        default=300, gt=0, description="detections-reconcile reports documents waiting longer"
    )
    reconcile_window_seconds: float = Field(
        default=24 * 3600, gt=0, description="Ready documents this recent have their object checked"
    )
    reconcile_batch: int = Field(default=500, gt=0, description="Documents examined per run")


detections = settings.cached(DetectionsSettings)
