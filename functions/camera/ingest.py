"""camera-ingest — one CloudEvent per MQTT chunk on `camera/<uid>/image_json`.

The MQTT bridge turns each message into `objectflow.camera.chunk.received.v1` (subject: camera
uid); the trigger delivers them in order per camera, which captures without an `image_id`
need. The chunk is kept in Redis, and the chunk that completes a capture also finishes it
(functions.camera.capture). Bad chunks are rejected with a 4xx naming the field and change
nothing; an outage answers 503 and the broker redelivers.
"""

from __future__ import annotations

from functions.camera import capture
from functions.camera.events import CameraChunk
from functions.runtime.adapter import Event, cloudevent_function


@cloudevent_function("camera-ingest", accepts=["objectflow.camera.chunk.received.v1"])
def camera_ingest(event: Event[CameraChunk]) -> None:
    store = capture.chunk_store()
    stored = capture.receive(store, event.data)
    if stored.complete:
        capture.finish(store, stored.image_id, by="camera-ingest")
