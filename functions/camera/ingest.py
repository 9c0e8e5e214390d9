"""camera-ingest — one CloudEvent per MQTT chunk on `camera/<uid>/image_json`.

The MQTT bridge turns each message into `objectflow.camera.chunk.received.v1` (subject: camera
uid); the trigger delivers them in order per camera, which captures without an `image_id`
need. The topic is the camera's identity (a broker ACL can pin a camera to its topic): a payload
`id` other than the topic's camera id is rejected. The chunk is kept in Redis, and the chunk that
completes a capture also finishes it (functions.camera.capture). Bad chunks are rejected with a
4xx naming the field and change nothing; an outage answers 503 and the broker redelivers.
"""

from __future__ import annotations

import re

from functions.camera import capture
from functions.camera.events import SAFE_SEGMENT, CameraChunk
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.errors import InvalidData


def check_identity(subject: str | None, chunk: CameraChunk) -> None:
    """The subject (the topic's camera id) must be a safe camera id and the payload's `id`."""
    if subject is None or not re.fullmatch(SAFE_SEGMENT, subject):
        raise InvalidData(
            f"the topic's camera id {subject!r} is not a camera id (letters, digits, . _ -; "
            "no leading dot; at most 128)",
            field="subject",
        )
    if chunk.id != subject:
        raise InvalidData(
            f"payload id {chunk.id!r} differs from the camera id {subject!r} of the topic",
            field="id",
        )


@cloudevent_function("camera-ingest", accepts=["objectflow.camera.chunk.received.v1"])
def camera_ingest(event: Event[CameraChunk]) -> None:
    check_identity(event.subject, event.data)
    store = capture.chunk_store()
    stored = capture.receive(store, event.data, capture.handled_key(event.source, event.id))
    if stored.complete:
        capture.finish(store, stored.image_id, by="camera-ingest")
