"""The camera pipeline through the running runtime, from MQTT publish to object, rows, messages.

Cameras publish to Mosquitto; the MQTT bridge, the broker, camera-ingest, MinIO's notification,
the MinIO adapter and camera-watch do the rest. Every assertion reads the real services.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
import requests

from devstack import wiring
from devstack.camera import sim as camera_sim
from devstack.runtime import ticker
from tests.camera_support import BoundQueue, objects, redis_client, rows, sha256, snapshot, sql
from tests.e2e.camera.conftest import uid
from tests.support import E2E_OVERLAY, s3_client, scaled, start_stack, stop_service, wait_for

Deliveries = Callable[..., list[dict[str, Any]]]


def settled(env: dict[str, str], camera: str, captures: int) -> bool:
    return len(objects(env, camera)) == captures and len(rows(env, camera)) == captures


@pytest.mark.chaos
def test_many_cameras_publishing_concurrently(
    stack_env: dict[str, str], camera_client: Callable[[], Any], queue: BoundQueue
) -> None:
    rng = random.Random(20)
    cameras = [uid() for _ in range(scaled(6, 20))]
    plan: dict[str, list[tuple[camera_sim.Capture, list[dict[str, Any]]]]] = {}
    for n, camera in enumerate(cameras):
        plan[camera] = []
        for k in range(2):  # two captures back to back per camera
            total = (1, 64)[n % 2] if n < 4 else rng.randint(1, 64)
            with_id = (n + k) % 2 == 0
            image = camera_sim.image(total * rng.randint(200, 1500), rng.choice(["jpeg", "png"]))
            capture = camera_sim.Capture(
                camera, image, total, str(uuid.uuid4()) if with_id else None
            )
            messages = capture.payloads()
            if with_id:  # duplicates anywhere and any order: image_id tells captures apart
                messages += rng.sample(messages, k=min(3, total))
                rng.shuffle(messages)
            elif total > 1:  # in order, a chunk of the open capture sent twice in a row (a
                # new MQTT message with the same bytes; after the last chunk it would start a new
                # capture, docs/camera.md "Limits")
                again = rng.randrange(total - 1)
                messages.insert(again + 1, messages[again])
            plan[camera].append((capture, messages))

    def run_camera(camera: str) -> None:
        client = camera_client()
        for _capture, messages in plan[camera]:
            camera_sim.publish(client, camera, messages)

    threads = [threading.Thread(target=run_camera, args=(c,)) for c in cameras]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for camera in cameras:
        wait_for(lambda c=camera: settled(stack_env, c, 2), timeout=120, what=f"{camera} settled")
        expected = sorted(sha256(capture.image) for capture, _ in plan[camera])
        stored = objects(stack_env, camera)
        assert sorted(sha256(data) for data in stored.values()) == expected
        by_key = {r["object_key"]: r for r in rows(stack_env, camera)}
        assert set(by_key) == set(stored)
        for key, data in stored.items():
            assert by_key[key]["device_uid"] == camera and by_key[key]["checksum"] == sha256(data)
        given = {c.image_id for c, _ in plan[camera] if c.image_id}
        assert given <= {r["image_id"] for r in by_key.values()}

    keys = {key for camera in cameras for key in objects(stack_env, camera)}

    def announced() -> list[dict[str, Any]]:
        return [m for m in queue.messages() if m["objectKey"] in keys]

    wait_for(lambda: len(announced()) >= len(keys), timeout=60, what="raw.created messages")
    messages = announced()
    assert sorted(m["objectKey"] for m in messages) == sorted(keys)  # exactly one each
    assert {m["_routing_key"] for m in messages} == {"raw.created"}


def test_processed_upload_moves_the_row_on(
    stack_env: dict[str, str], camera_client: Callable[[], Any], queue: BoundQueue
) -> None:
    camera = uid()
    camera_sim.publish(
        camera_client(), camera, camera_sim.Capture(camera, camera_sim.image(900), 3).payloads()
    )
    wait_for(lambda: settled(stack_env, camera, 1), what="the raw capture")
    (key,) = objects(stack_env, camera)
    # Downstream processing starts from raw.created; the two notifications are not ordered.
    wait_for(lambda: queue.about(key), what="raw.created")
    s3_client(stack_env).put_object(
        Bucket="thermo-processed", Key=key, Body=camera_sim.image(700, "png")
    )
    wait_for(lambda: rows(stack_env, camera)[0]["status"] == "processing", what="processing")
    wait_for(lambda: len(queue.about(key)) == 2, what="raw and processed messages")
    assert [m["_routing_key"] for m in queue.about(key)] == ["raw.created", "processed.created"]
    assert queue.about(key)[1]["bucket"] == "thermo-processed"


def reports(deliveries: Deliveries, kind: str, since: float) -> list[dict[str, Any]]:
    return [
        d for d in deliveries("e2e-sources")
        if d["type"] == f"objectflow.camera.{kind}.v1" and d["at"] >= since
    ]  # fmt: skip


def test_reconcile_tick_republishes_and_fails_in_one_run(
    stack_env: dict[str, str], deliveries: Deliveries, queue: BoundQueue
) -> None:
    camera = uid()
    s3 = s3_client(stack_env)
    kept, gone = f"{camera}/kept.jpg", f"{camera}/gone.jpg"
    for key in (kept, gone):
        s3.put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(300))
    wait_for(lambda: len(rows(stack_env, camera)) == 2 and len(queue.messages()) >= 2)
    s3.delete_object(Bucket="thermo-raw", Key=gone)
    # A first run settles century-old rows an interrupted earlier run may have left behind.
    flushed = time.time()
    ticker.fire_by_hand("camera-reconcile", [E2E_OVERLAY])
    wait_for(lambda: reports(deliveries, "reconciled", flushed), what="the first report")
    sql(stack_env, "UPDATE thermo.image_objects SET updated_at = now() - interval '100 years' "
        "WHERE object_key = ANY(%s)", [kept, gone])  # fmt: skip
    started = time.time()
    ticker.fire_by_hand("camera-reconcile", [E2E_OVERLAY])  # what `objectflow tick` does

    [report] = wait_for(lambda: reports(deliveries, "reconciled", started), what="the report")
    assert report["data"] == {"checked": 2, "republished": 1, "failed": 1, "errors": 0}
    by_key = {r["object_key"]: r for r in rows(stack_env, camera)}
    assert (by_key[kept]["status"], by_key[kept]["republish_count"]) == ("pending", 1)
    assert by_key[gone]["status"] == "failed"
    wait_for(lambda: len(queue.about(kept)) == 2, what="the re-published message")


BAD = {
    "invalid JSON": (b"{not json", 415, "data is not JSON"),
    "invalid base64": ({"index": 0, "total": 2, "data": "%%"}, 422, "not valid base64"),
    "index outside total": ({"index": 2, "total": 2, "data": "eHh4"}, 422, "outside 0..1"),
    "total above the maximum": (
        {"index": 0, "total": 5000, "data": "eHh4"},
        422,
        "CAMERA_MAX_CHUNKS",
    ),
    "chunk above the size limit": (
        {"index": 0, "total": 2, "data": base64.b64encode(b"x" * 300_000).decode()},
        413,
        "CAMERA_MAX_CHUNK_BYTES",
    ),
    "camera id not a path segment": (
        {"id": "..", "index": 0, "total": 2, "data": "eHh4"},
        422,
        "id",
    ),
}


def dead_letters(env: dict[str, str], topic: str) -> list[tuple[int, str]]:
    """(status, body) of the dead letters of events bridged from one MQTT topic."""
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status_code, response_body FROM objectflow.dead_letters "
            "WHERE event_source LIKE %s",
            (f"%/{topic}",),
        )
        return cur.fetchall()


def test_bad_chunks_end_in_the_dead_letter_store_and_change_nothing(
    stack_env: dict[str, str], camera_client: Callable[[], Any]
) -> None:
    client = camera_client()
    cases = {}
    for name, (payload, status, detail) in BAD.items():
        camera = uid()
        body = (
            payload
            if isinstance(payload, bytes)
            else json.dumps({"id": camera, **payload}).encode()
        )
        client.publish(camera_sim.topic(camera), body, qos=1).wait_for_publish(10)
        cases[name] = (camera, status, detail)

    # A capture in progress (with an image_id), then a chunk that changes its total.
    camera, image_id = uid(), str(uuid.uuid4())
    first = {"id": camera, "index": 0, "total": 4, "data": "eHh4", "image_id": image_id}
    client.publish(camera_sim.topic(camera), json.dumps(first), qos=1).wait_for_publish(10)
    wait_for(lambda: redis_client(stack_env).exists(f"image_chunks:{image_id}"), what="capture")
    before = snapshot(stack_env, camera, image_id)
    changed = {**first, "index": 1, "total": 5}
    client.publish(camera_sim.topic(camera), json.dumps(changed), qos=1).wait_for_publish(10)
    cases["total changed"] = (camera, 422, "differs from 4")

    for name, (camera, status, detail) in cases.items():
        [(code, body)] = wait_for(
            lambda c=camera: dead_letters(stack_env, camera_sim.topic(c)),
            what=f"dead letter of {name}",
        )
        assert code == status, name
        assert detail in json.loads(body)["detail"], (name, body)
        if name != "total changed":
            assert snapshot(stack_env, camera) == {
                "redis": {}, "index": {}, "objects": [], "rows": []
            }, name  # fmt: skip
    assert snapshot(stack_env, camera, image_id) == before


# --- outages: the real service stopped and started again ---------------------------------------


def function_metric(values: wiring.Values, function: str, pattern: str) -> float:
    port = values.function_ports()[function]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line)
    )


def test_minio_outage_during_assembly_completes_after_it_returns(
    stack_env: dict[str, str], camera_client: Callable[[], Any], values: wiring.Values
) -> None:
    camera, image_id = uid(), str(uuid.uuid4())
    image = camera_sim.image(5000, seed=11)
    capture = camera_sim.Capture(camera, image, 4, image_id=image_id)
    r = redis_client(stack_env)
    stop_service("minio")
    try:
        camera_sim.publish(camera_client(), camera, capture.payloads())
        wait_for(lambda: r.hlen(f"image_chunks:{image_id}") == 4, what="all chunks in Redis")
        failing = 'objectflow_errors_total{function="camera-ingest",kind="dependency-unavailable"}'
        wait_for(lambda: function_metric(values, "camera-ingest", re.escape(failing)) > 0)
        assert not r.exists(f"processed:{image_id}")  # never marked processed early
    finally:
        start_stack()
    wait_for(lambda: r.exists(f"processed:{image_id}"), timeout=60, what="processed")
    (data,) = objects(stack_env, camera).values()
    assert sha256(data) == sha256(image)
    assert [row["image_id"] for row in rows(stack_env, camera)] == [image_id]


def test_rabbitmq_outage_publishes_exactly_once_after_it_returns(
    stack_env: dict[str, str], values: wiring.Values, queue: BoundQueue
) -> None:
    camera = uid()
    key = f"{camera}/{uuid.uuid4()}.jpg"
    pattern = re.escape(
        'objectflow_errors_total{function="camera-watch",kind="dependency-unavailable"}'
    )
    before = function_metric(values, "camera-watch", pattern)
    stop_service("rabbitmq")
    try:
        s3_client(stack_env).put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(400))
        wait_for(lambda: function_metric(values, "camera-watch", pattern) > before, what="a 503")
        wait_for(lambda: len(rows(stack_env, camera)) == 1, what="the row, recorded meanwhile")
    finally:
        start_stack()
    wait_for(lambda: queue.about(key), timeout=120, what="the announcement")

    def published() -> bool:
        with psycopg2.connect(stack_env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM thermo.watch_publications WHERE object_key = %s", (key,)
            )
            return cur.fetchone() == (1,)

    wait_for(published, what="the publication recorded")
    assert len(queue.about(key)) == 1


def test_postgres_outage_leaves_no_object_without_a_row(
    stack_env: dict[str, str], camera_client: Callable[[], Any], values: wiring.Values
) -> None:
    camera = uid()
    images = [camera_sim.image(3000, seed=s) for s in (21, 22)]
    pattern = re.escape(
        'objectflow_errors_total{function="camera-ingest",kind="dependency-unavailable"}'
    )
    before = function_metric(values, "camera-ingest", pattern)
    stop_service("postgres")
    try:
        client = camera_client()
        for image in images:
            camera_sim.publish(client, camera, camera_sim.Capture(camera, image, 3).payloads())
        wait_for(lambda: function_metric(values, "camera-ingest", pattern) > before, what="a 503")
    finally:
        start_stack()
    wait_for(lambda: settled(stack_env, camera, 2), timeout=120, what="objects and rows")
    stored = objects(stack_env, camera)
    assert sorted(sha256(b) for b in stored.values()) == sorted(sha256(i) for i in images)
    assert {r["object_key"] for r in rows(stack_env, camera)} == set(stored)
