"""The baseline of the camera benchmark: source document 001's architecture, one process.

One MQTT consumer subscribed to `<root>/+/image_json` does the same Redis, MinIO and PostgreSQL
work as camera-ingest (the same domain code, functions.camera.capture), in arrival order, with no
broker, no HTTP and no CloudEvents in between:

    python -m bench.camera.direct <topic-root>
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
from typing import Any

from pydantic import ValidationError

from functions.camera import capture
from functions.camera.events import CameraChunk
from functions.runtime import clients
from functions.runtime.errors import ObjectflowError

log = logging.getLogger("objectflow.bench.direct")


def main(root: str) -> int:
    logging.basicConfig(level=logging.WARNING)
    inbox: queue.Queue[Any] = queue.Queue()
    client = clients.mqtt.connect(
        f"objectflow-bench-direct-{root}", on_message=lambda _c, _u, m: inbox.put(m)
    )
    client.subscribe(f"{root}/+/image_json", qos=1)
    signal.signal(signal.SIGTERM, lambda *_: inbox.put(None))
    print("ready", flush=True)
    store = capture.chunk_store()
    for message in iter(inbox.get, None):
        try:
            chunk = CameraChunk.model_validate(json.loads(message.payload))
            stored = capture.receive(store, chunk)
            if stored.complete:
                capture.finish(store, stored.image_id, by="bench-direct")
        except (ValueError, ValidationError, ObjectflowError) as exc:
            log.warning("chunk dropped: %s", exc)
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
