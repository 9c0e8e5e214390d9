"""The camera benchmark's limit rows: what each service sustains alone, on this machine, for its
share of the camera work, in the same run as the pipeline and the direct consumer.

Every row runs `THREADS` clients back to back for `seconds` with the product's own clients and
code, and states its rate also as chunks/s (a capture is `chunks` chunks):
- mosquitto: QoS 1 publishes of real chunk payloads, counted at a QoS 1 subscriber;
- redis: the chunk script (`ChunkStore.store`, the camera-session path), one call per chunk;
- minio: PUT of one assembled capture (`chunks` x `chunk_bytes`), one per capture;
- postgresql: the image row upsert (`records.record`), one per capture.
What a row writes is removed afterwards (Redis keys expire with the captures' TTL).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from psycopg2.extensions import cursor as Cursor

from devstack.api import camera_sim
from functions.camera import capture, records
from functions.runtime import clients

THREADS = 4
BUCKET = "bench-camera-limits"


@dataclass(frozen=True)
class Limit:
    service: str
    work: str
    per_s: float  # operations per second
    chunks_per_s: float  # the same rate in chunks (an operation is 1 or `chunks` chunks)


def _for(seconds: float, step: Callable[[int, int], None]) -> float:
    """Run `step(thread, n)` on THREADS threads until `seconds` pass; operations per second."""
    counts = [0] * THREADS
    end = time.monotonic() + seconds

    def loop(thread: int) -> None:
        while time.monotonic() < end:
            step(thread, counts[thread])
            counts[thread] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=loop, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - began)


def mosquitto(payload: bytes, seconds: float) -> float:
    """QoS 1 messages/s from THREADS publishers to one QoS 1 subscriber."""
    topic = f"bench-limits/{uuid.uuid4().hex[:8]}/image_json"
    received = threading.Semaphore(0)
    counted = [0]

    def on_message(*_args: object) -> None:
        counted[0] += 1
        received.release()

    subscriber = clients.mqtt.connect(f"bench-limits-sub-{uuid.uuid4().hex[:6]}",
                                      on_message=on_message)  # fmt: skip
    subscriber.subscribe(topic, qos=1)
    time.sleep(0.5)  # the SUBACK
    publishers = [clients.mqtt.connect(f"bench-limits-pub-{uuid.uuid4().hex[:6]}-{n}")
                  for n in range(THREADS)]  # fmt: skip
    sent = [0] * THREADS
    end = time.monotonic() + seconds
    began = time.monotonic()

    def publish(n: int) -> None:
        while time.monotonic() < end:
            info = publishers[n].publish(topic, payload, qos=1)
            sent[n] += 1
            if sent[n] % 20 == 0:  # paho's in-flight window
                info.wait_for_publish(timeout=30)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(sum(sent)):
        received.acquire(timeout=30)
    rate = counted[0] / (time.monotonic() - began)
    for client in (*publishers, subscriber):
        client.disconnect()
        client.loop_stop()
    return rate


def redis(chunks: int, chunk_bytes: int, seconds: float) -> float:
    """Chunk script calls/s, each thread a camera sending capture after capture."""
    store = capture.chunk_store()
    data = b"\xff" * chunk_bytes
    uids = [f"bench-limits-{uuid.uuid4().hex[:6]}-{n}" for n in range(THREADS)]
    return _for(seconds, lambda t, n: store.store(uids[t], n % chunks, chunks, data, None))


def minio(size: int, seconds: float) -> float:
    """PUTs/s of one assembled capture into a bucket of the bench's own (emptied after)."""
    s3 = clients.s3.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    body = camera_sim.image(size, "jpeg")
    prefix = uuid.uuid4().hex[:8]

    def put(t: int, n: int) -> None:
        s3.put_object(
            Bucket=BUCKET, Key=f"{prefix}/{t}/{n}.jpg", Body=body, ContentType="image/jpeg"
        )

    rate = _for(seconds, put)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
    return rate


def postgresql(size: int, seconds: float) -> float:
    """Image row upserts/s (one transaction each, as camera-ingest commits them)."""
    uid = f"bench-limits-{uuid.uuid4().hex[:6]}"

    def upsert(t: int, n: int) -> None:
        seen = records.ObjectSeen(
            device_uid=f"{uid}-{t}", object_key=f"{uid}-{t}/{n}.jpg", bucket=BUCKET,
            status="pending", size=size, etag="0" * 32, checksum="0" * 64,
            content_type="image/jpeg", image_id=str(uuid.uuid4()), failure_reason=None,
        )  # fmt: skip
        clients.postgres.transaction(lambda cur: records.record(cur, seen))

    rate = _for(seconds, upsert)

    def clean(cur: Cursor) -> None:
        cur.execute(
            """DELETE FROM thermo.image_objects o USING thermo.devices d
               WHERE d.id = o.device_id AND d.device_uid LIKE %s""",
            (f"{uid}-%",),
        )
        cur.execute("DELETE FROM thermo.devices WHERE device_uid LIKE %s", (f"{uid}-%",))

    clients.postgres.transaction(clean)
    return rate


def measure(chunks: int, chunk_bytes: int, seconds: float) -> list[Limit]:
    size = chunks * chunk_bytes
    first = camera_sim.Capture("bench-limits", camera_sim.image(size), chunks).payloads()[0]
    payload = json.dumps(first).encode()
    rows = [  # (service, work, operations/s, chunks per operation)
        ("mosquitto", "QoS 1 publish -> subscriber, one chunk", mosquitto(payload, seconds), 1),
        ("redis", "chunk script, one chunk", redis(chunks, chunk_bytes, seconds), 1),
        ("minio", f"PUT of one capture ({size // 1024} KiB)", minio(size, seconds), chunks),
        ("postgresql", "image row upsert, one capture", postgresql(size, seconds), chunks),
    ]
    return [Limit(s, w, round(rate, 1), round(rate * n, 1)) for s, w, rate, n in rows]
