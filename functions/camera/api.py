"""camera-api — the HTTP status of captures (docs/camera.md).

GET /captures/<image_id>   -> progress in Redis (received, total, missing indexes, status)
                              and the image_objects row once there is one; 404 if unknown
GET /health, GET /metrics, GET /openapi.json: the frame's (functions.runtime.http)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from functions.camera import capture, records
from functions.camera.events import SAFE_SEGMENT
from functions.runtime import BadRequest, NotFound, clients, http_function


def status(image_id: str) -> dict[str, Any] | None:
    """Everything known about one capture, or None if neither Redis nor PostgreSQL knows it."""
    found = clients.call("redis", lambda: capture.chunk_store().capture(image_id))
    record = clients.postgres.transaction(lambda cur: records.by_image_id(cur, image_id))
    if found is None and record is None:
        return None
    # Redis forgets a processed capture after CAMERA_PROCESSED_TTL_S; the row remains.
    if found is None or found.processed_key:
        state = "processed"
    else:
        state = "complete" if found.complete else "partial"
    body: dict[str, Any] = {
        "image_id": image_id,
        "status": state,
        "camera_uid": None,
        "received": None,
        "total": None,
        "missing": [],
        "object_key": None,
        "record": None,
    }
    if found is not None:
        body.update(
            camera_uid=found.camera_uid,
            received=len(found.received),
            total=found.total,
            missing=found.missing,
            object_key=found.processed_key,
        )
    if record is not None:
        body.update(
            camera_uid=record.device_uid, object_key=record.object_key, record=record.as_json()
        )
    return body


class CaptureStatus(BaseModel):
    image_id: str
    status: Literal["partial", "complete", "processed"]
    camera_uid: str | None
    received: int | None = Field(description="Chunks received so far")
    total: int | None = Field(description="Chunks the capture has")
    missing: list[int] = Field(description="Indexes not received yet")
    object_key: str | None = Field(description="Its object in the raw bucket, once processed")
    record: dict[str, Any] | None = Field(description="Its thermo.image_objects row")


api = http_function("camera-api", summary="Progress and records of camera captures")


@api.get("/captures/{image_id}", response_model=CaptureStatus)
def capture_status(image_id: str) -> dict[str, Any]:
    """Chunks received of total, and the database record once there is one."""
    if not re.fullmatch(SAFE_SEGMENT, image_id):
        raise BadRequest("not an image id", field="image_id")
    found = status(image_id)
    if found is None:
        raise NotFound(f"no capture {image_id}", field="image_id")
    return found


camera_api = api.target
