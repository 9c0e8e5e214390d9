"""Event types of the detections outbox (docs/detections.md)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from functions.runtime.registry import EventData, EventType, register

PREDICTABLE = "objectflow.detections.prediction.predictable.v1"
RECONCILED = "objectflow.detections.reconciled.v1"

# A MongoDB collection name as the source and the function accept it (no `$`, no system.).
COLLECTION = r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$"


class PredictionPredictable(EventData):
    """A document of the outbox collection is `predictable`: a reference, not a copy.

    The function reads the document itself, under its claim, so it always acts on the current
    state (a replay after `ready` changes nothing) and predictions of any size travel no broker.
    """

    collection: str = Field(pattern=COLLECTION, description="Collection in MONGODB_URI's database")
    document_id: Any = Field(description="The document's `_id` as MongoDB relaxed extended JSON")


class ReconcileReport(EventData):
    predictable: int = Field(ge=0, description="Documents waiting to be written")
    stuck: int = Field(ge=0, description="Predictable for longer than the stuck threshold")
    rejected: int = Field(ge=0, description="Predictable with an `outbox_error` (need an operator)")
    checked: int = Field(ge=0, description="Ready documents whose object was looked up")
    reopened: int = Field(ge=0, description="Ready documents whose object was missing")
    errors: int = Field(ge=0, description="Documents skipped because a dependency failed")


register(
    EventType(
        PREDICTABLE,
        PredictionPredictable,
        "A prediction document waits in the outbox (id = subject = its event_id).",
    ),
    EventType(
        RECONCILED,
        ReconcileReport,
        "detections-reconcile finished a run over stuck and lost documents.",
    ),
)
