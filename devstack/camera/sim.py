"""Simulated cameras: captures split into chunks and published the way cameras do it.

MQTT topic `camera/<uid>/image_json`, JSON `{"id", "index", "total", "data" (base64)}` plus
an optional `image_id` (source document 001). Used by `objectflow demo` (devstack/camera/demo.py),
the tests and the camera benchmark (bench/camera/).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAGIC = {"jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "png": b"\x89PNG\r\n\x1a\n", "bin": b"RAW0"}


def topic(camera_uid: str) -> str:
    return f"camera/{camera_uid}/image_json"


def image(size: int, kind: str = "jpeg", seed: int | None = None) -> bytes:
    """`size` bytes that begin with the magic bytes of `kind` (jpeg, png or bin)."""
    head = MAGIC[kind]
    body = random.Random(seed).randbytes(max(size - len(head), 0))
    return head + body


@dataclass(frozen=True)
class Capture:
    camera_uid: str
    image: bytes
    total: int
    image_id: str | None = None

    def payloads(self) -> list[dict[str, Any]]:
        """One message per chunk, in index order."""
        step = -(-len(self.image) // self.total)
        messages = []
        for index in range(self.total):
            part = self.image[index * step : (index + 1) * step]
            message: dict[str, Any] = {
                "id": self.camera_uid,
                "index": index,
                "total": self.total,
                "data": base64.b64encode(part).decode(),
            }
            if self.image_id is not None:
                message["image_id"] = self.image_id
            messages.append(message)
        return messages


def publish(client: Any, camera_uid: str, messages: Iterable[dict[str, Any]]) -> None:
    """Publish at QoS 1 with a paho client and wait until the broker acknowledged each one."""
    infos = [client.publish(topic(camera_uid), json.dumps(m), qos=1) for m in messages]
    for info in infos:
        info.wait_for_publish(timeout=30)
