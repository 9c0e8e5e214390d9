"""camera-api — HTTP status of captures (source document 001's "status endpoint").

GET /health                -> {"status": "ok", "ts": "<ISO-8601>"}
GET /captures/<image_id>   -> progress in Redis (received, total, missing indexes, status)
                              and the image_objects row once there is one; 404 if unknown
GET /metrics               -> Prometheus
"""

from __future__ import annotations

import json
import re
from typing import Any

import flask
import functions_framework

from functions.camera import capture, records
from functions.events import SAFE_SEGMENT
from functions.runtime import adapter, clients
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import ObjectflowError

CAPTURE_PATH = re.compile(r"^/captures/(?P<image_id>[^/]+)/?$")


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


@functions_framework.http
def camera_api(request: flask.Request) -> flask.Response:
    objectflow_logging.configure("camera-api")
    if request.method != "GET":
        return _json(405, {"error": "method-not-allowed", "detail": "only GET"})
    match = CAPTURE_PATH.match(request.path)
    if match is None:
        return adapter.answer_get("camera-api", request.path)
    image_id = match["image_id"]
    if not re.match(SAFE_SEGMENT, image_id):
        return _json(
            400, {"error": "bad-request", "detail": "not an image id", "field": "image_id"}
        )
    try:
        found = status(image_id)
    except ObjectflowError as exc:
        return _json(exc.status, exc.body())
    if found is None:
        return _json(404, {"error": "not-found", "detail": f"no capture {image_id}"})
    return _json(200, found)


def _json(code: int, body: dict[str, Any]) -> flask.Response:
    return flask.Response(json.dumps(body), status=code, mimetype="application/json")
