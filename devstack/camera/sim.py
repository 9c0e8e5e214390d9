"""Simulated cameras: captures split into chunks and published the way cameras do it.

MQTT topic `camera/<uid>/image_json`, JSON `{"id", "index", "total", "data" (base64)}` plus
an optional `image_id` (source document 001). Used by `objectflow demo` (devstack/camera/demo.py),
the tests and the camera benchmark (bench/camera/).
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image

MAGIC = {"jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "png": b"\x89PNG\r\n\x1a\n", "bin": b"RAW0"}


def topic(camera_uid: str) -> str:
    return f"camera/{camera_uid}/image_json"


def image(size: int, kind: str = "jpeg", seed: int | None = None) -> bytes:
    """An image of about `size` bytes: a real, decodable JPEG or PNG of random pixels (their
    noise does not compress), or for `bin` the magic bytes `RAW0` followed by random bytes."""
    rng = random.Random(seed)
    if kind == "bin":
        return MAGIC["bin"] + rng.randbytes(max(size - len(MAGIC["bin"]), 0))
    fmt = {"jpeg": "JPEG", "png": "PNG"}[kind]

    def encode(side: int) -> bytes:
        pixels = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        out = io.BytesIO()
        pixels.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        return out.getvalue()

    side = max(1, math.isqrt(max(size, 1) // 3))
    first = encode(side)  # then scale once to land near `size`
    return encode(max(1, round(side * math.sqrt(size / len(first)))))


def corrupt(size: int, kind: str = "jpeg", seed: int | None = None) -> bytes:
    """Bytes that start like a JPEG or PNG (magic bytes) but do not decode as one."""
    head = MAGIC[kind]
    return head + random.Random(seed).randbytes(max(size - len(head), 0))


@dataclass(frozen=True)
class Capture:
    camera_uid: str
    image: bytes
    total: int
    image_id: str | None = None

    def payloads(self) -> list[dict[str, Any]]:
        """One message per chunk, in index order; chunks differ in length by one byte at most."""
        size, messages = len(self.image), []
        for index in range(self.total):
            part = self.image[index * size // self.total : (index + 1) * size // self.total]
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
