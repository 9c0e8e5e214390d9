"""The camera functions against the real Redis, MinIO, PostgreSQL and RabbitMQ.

Each function is served by functions-framework's own app (as in production) and fed real
CloudEvents; every assertion reads the real services.
"""

from __future__ import annotations

import base64
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient

from devstack.camera import sim as camera_sim
from functions.runtime import clients, settings
from tests.camera_support import (
    BoundQueue,
    objects,
    redis_client,
    rows,
    sha256,
    snapshot,
    sql,
)
from tests.support import http_app, s3_client, wait_for

ROOT = Path(__file__).resolve().parents[2]
App = Callable[[str], FlaskClient]


@pytest.fixture
def app(service_env: dict[str, str]) -> Iterator[App]:
    """`app("ingest")` -> a test client of camera-<name>'s functions-framework app."""
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    settings.reset()
    clients.reset()
    targets = {
        "ingest": "camera_ingest",
        "watch": "camera_watch",
        "reconcile": "camera_reconcile",
        "sweep": "camera_sweep",
        "api": "camera_api",
    }

    def client(name: str) -> FlaskClient:
        source = str(ROOT / "functions" / "camera" / f"{name}.py")
        if name == "api":
            return http_app(source, targets[name])
        return functions_framework.create_app(targets[name], source, "http").test_client()

    yield client
    clients.reset()
    settings.reset()


def uid() -> str:
    return f"cam-{uuid.uuid4().hex[:8]}"


def chunk_event(payload: dict[str, Any], subject: str | None = None) -> CloudEvent:
    subject = subject or str(payload.get("id"))
    attributes = {
        "type": "objectflow.camera.chunk.received.v1",
        "source": f"mqtt://127.0.0.1:1883/camera/{subject}/image_json",
        "id": uuid.uuid4().hex,
        "subject": subject,
    }
    return CloudEvent(attributes, payload)


def post(client: FlaskClient, event: CloudEvent) -> Any:
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body)


def send(client: FlaskClient, payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        response = post(client, chunk_event(payload))
        assert response.status_code == 204, response.get_data(as_text=True)


# --- camera-ingest ------------------------------------------------------------------------


def test_shuffled_and_duplicated_chunks_with_image_id_make_one_image(
    app: App, service_env: dict[str, str]
) -> None:
    camera, image_id = uid(), str(uuid.uuid4())
    image = camera_sim.image(40_000, "png", seed=1)
    payloads = camera_sim.Capture(camera, image, 9, image_id=image_id).payloads()
    shuffled = payloads + payloads[2:5]
    random.Random(7).shuffle(shuffled)
    ingest = app("ingest")
    send(ingest, shuffled)

    key = f"{camera}/{image_id}.png"
    stored = objects(service_env, camera)
    assert list(stored) == [key] and sha256(stored[key]) == sha256(image)
    head = s3_client(service_env).head_object(Bucket="thermo-raw", Key=key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"device-uid": camera, "image-id": image_id, "sha256": sha256(image)}
    (row,) = rows(service_env, camera)
    assert (row["image_id"], row["object_key"], row["status"], row["checksum"], row["size"]) == (
        image_id, key, "pending", sha256(image), len(image),
    )  # fmt: skip
    r = redis_client(service_env)
    assert r.get(f"processed:{image_id}") == key.encode()
    assert not r.exists(f"image_chunks:{image_id}")  # the bytes are dropped once processed

    # A late duplicate of a finished capture is acknowledged and changes nothing.
    before = snapshot(service_env, camera, image_id)
    send(ingest, payloads[:1])
    assert snapshot(service_env, camera, image_id) == before


def test_back_to_back_captures_without_image_id_are_never_mixed(
    app: App, service_env: dict[str, str]
) -> None:
    camera = uid()
    first, second = camera_sim.image(3000, seed=2), camera_sim.image(5000, "bin", seed=3)
    ingest = app("ingest")
    send(ingest, camera_sim.Capture(camera, first, 3).payloads())
    # The second capture repeats one chunk (a redelivery) and has another total.
    second_payloads = camera_sim.Capture(camera, second, 4).payloads()
    send(ingest, second_payloads[:2] + second_payloads[1:])

    stored = objects(service_env, camera)
    assert sorted(sha256(b) for b in stored.values()) == sorted([sha256(first), sha256(second)])
    assert {k.rsplit(".", 1)[1] for k in stored} == {"jpg", "bin"}
    assert len(rows(service_env, camera)) == 2
    # The session still names the finished capture (to know a resent last chunk), nothing else.
    session = redis_client(service_env).get(f"camera_session:{camera}")
    assert session is not None and redis_client(service_env).exists(f"processed:{session.decode()}")


def test_an_abandoned_capture_does_not_swallow_the_next_one(
    app: App, service_env: dict[str, str]
) -> None:
    camera = uid()
    abandoned = camera_sim.Capture(camera, camera_sim.image(4000, seed=4), 4).payloads()
    image = camera_sim.image(4000, seed=5)
    ingest = app("ingest")
    send(ingest, abandoned[:2])  # the camera rebooted mid-capture
    send(ingest, camera_sim.Capture(camera, image, 4).payloads())
    assert [sha256(b) for b in objects(service_env, camera).values()] == [sha256(image)]


def payload_with(**changes: Any) -> Callable[[str], dict[str, Any]]:
    def make(camera: str) -> dict[str, Any]:
        base = {"id": camera, "index": 0, "total": 4, "data": base64.b64encode(b"x" * 50).decode()}
        return {**base, **changes}

    return make


BAD_CHUNKS = {
    "bad base64": (payload_with(data="%%%not-base64%%%"), 422, "data"),
    "index outside total": (payload_with(index=4), 422, "data"),
    "negative index": (payload_with(index=-1), 422, "index"),
    "index of the wrong type": (payload_with(index="0"), 422, "index"),
    "total above the maximum": (payload_with(total=9), 422, "total"),
    "chunk above the size limit": (
        payload_with(data=base64.b64encode(b"x" * 300).decode()),
        413,
        "data",
    ),
    "camera id not a path segment": (lambda camera: payload_with()(f"../{camera}"), 422, "id"),
    "image id not a path segment": (payload_with(image_id="a/b"), 422, "image_id"),
}


@pytest.mark.parametrize("case", BAD_CHUNKS, ids=list(BAD_CHUNKS))
def test_bad_chunks_get_a_specific_error_and_change_nothing(
    app: App, service_env: dict[str, str], case: str
) -> None:
    make, status, field = BAD_CHUNKS[case]
    os.environ.update(CAMERA_MAX_CHUNKS="8", CAMERA_MAX_CHUNK_BYTES="200")
    camera = uid()
    ingest = app("ingest")
    send(ingest, [payload_with()(camera)])  # a capture in progress, which must stay as it is
    before = snapshot(service_env, camera)
    response = post(ingest, chunk_event(make(camera), subject=camera))
    assert response.status_code == status
    assert response.get_json()["field"] == field
    assert snapshot(service_env, camera) == before


def test_non_json_chunk_and_a_changed_total_with_image_id_are_rejected(
    app: App, service_env: dict[str, str]
) -> None:
    camera, image_id = uid(), str(uuid.uuid4())
    ingest = app("ingest")
    # Two captures in progress: one with an image_id, one in the camera's session.
    send(ingest, [payload_with(image_id=image_id)(camera), payload_with()(camera)])
    before = snapshot(service_env, camera, image_id)

    raw = CloudEvent(
        {**chunk_event({}, subject=camera).get_attributes(), "datacontenttype": "text/plain"},
        b"{not json",
    )
    headers, body = to_binary(raw)
    assert ingest.post("/", headers=headers, data=body).status_code == 415

    response = post(ingest, chunk_event(payload_with(image_id=image_id, index=1, total=5)(camera)))
    assert response.status_code == 422
    assert "differs from 4" in response.get_json()["detail"]
    conflicting = payload_with(image_id=image_id, data=base64.b64encode(b"y" * 50).decode())
    response = post(ingest, chunk_event(conflicting(camera)))
    assert (response.status_code, response.get_json()["field"]) == (422, "data")
    assert snapshot(service_env, camera, image_id) == before

    # Without an image_id, another total is the camera's next capture, not an error.
    session = redis_client(service_env).get(f"camera_session:{camera}")
    send(ingest, [payload_with(index=0, total=5)(camera)])
    assert redis_client(service_env).get(f"camera_session:{camera}") not in (None, session)


def test_a_resent_last_chunk_of_a_finished_session_capture_stores_nothing_new(
    app: App, service_env: dict[str, str]
) -> None:
    camera, ingest = uid(), app("ingest")
    single = camera_sim.Capture(camera, camera_sim.image(900, seed=31), 1).payloads()
    double = camera_sim.Capture(camera, camera_sim.image(1800, seed=32), 2).payloads()
    send(ingest, single + single)  # a one-chunk capture, resent as a new MQTT message
    send(ingest, double + double[-1:])  # the same for the last chunk of a longer one
    send(ingest, single)  # then the one-chunk image again, now after another capture
    assert len(objects(service_env, camera)) == 3 and len(rows(service_env, camera)) == 3


# --- camera-watch ---------------------------------------------------------------------------


def s3_event(env: dict[str, str], bucket: str, key: str, **extra: Any) -> CloudEvent:
    head = s3_client(env).head_object(Bucket=bucket, Key=key)
    data = {
        "bucket": bucket,
        "key": key,
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
        "content_type": head["ContentType"],
        "user_metadata": head["Metadata"],
        "event_name": "s3:ObjectCreated:Put",
        "event_time": datetime.now(UTC).isoformat(),
        **extra,
    }
    attributes = {
        "type": "objectflow.s3.object.created.v1",
        "source": f"minio:{bucket}",
        "id": uuid.uuid4().hex,
        "subject": f"{bucket}/{key}",
    }
    return CloudEvent(attributes, data)


@pytest.fixture
def queue(service_env: dict[str, str]) -> Iterator[BoundQueue]:
    bound = BoundQueue(service_env, ["raw.created", "processed.created"])
    yield bound
    bound.close()


def test_watch_records_and_announces_each_object_version_once(
    app: App, service_env: dict[str, str], queue: BoundQueue
) -> None:
    camera = uid()
    key = f"{camera}/{uuid.uuid4()}.jpg"
    s3 = s3_client(service_env)
    s3.put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(500))
    watch = app("watch")
    event = s3_event(service_env, "thermo-raw", key)
    assert post(watch, event).status_code == 204
    duplicate = CloudEvent({**event.get_attributes(), "id": uuid.uuid4().hex}, event.get_data())
    assert post(watch, duplicate).status_code == 204  # another notification, same version

    (row,) = rows(service_env, camera)
    assert (row["bucket"], row["status"], row["device_uid"]) == ("thermo-raw", "pending", camera)

    # The processed image under the same key moves the same row on, and is announced too.
    s3.put_object(Bucket="thermo-processed", Key=key, Body=camera_sim.image(300, "png"))
    assert post(watch, s3_event(service_env, "thermo-processed", key)).status_code == 204
    (row,) = rows(service_env, camera)
    assert (row["bucket"], row["status"]) == ("thermo-processed", "processing")

    # A late raw notification (another version) never moves the status back.
    s3.put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(501))
    assert post(watch, s3_event(service_env, "thermo-raw", key)).status_code == 204
    assert rows(service_env, camera)[0]["status"] == "processing"

    # The running runtime's camera-watch gets MinIO's own notifications of the three writes;
    # they carry MinIO's sequencer, so they are versions of their own, announced once each too.
    announced = wait_for(lambda: len(queue.about(key)) >= 6 and queue.about(key), timeout=30)
    ids = [m["_message_id"] for m in announced]
    assert len(set(ids)) == len(ids) == 6, ids
    assert Counter(m["_routing_key"] for m in announced) == {
        "raw.created": 4,
        "processed.created": 2,
    }
    for message in announced:
        assert message["deviceUid"] == camera and message["imageObjectId"] == row["id"]
        assert message["_persistent"]
        raw = message["_routing_key"] == "raw.created"
        assert message["status"] == ("pending" if raw else "processing")


def test_watch_rejects_a_key_without_device_uid(app: App, service_env: dict[str, str]) -> None:
    key = f"no-device-{uuid.uuid4().hex}.jpg"
    s3_client(service_env).put_object(Bucket="thermo-raw", Key=key, Body=b"x")
    response = post(app("watch"), s3_event(service_env, "thermo-raw", key))
    assert response.status_code == 422
    assert "no usable device uid" in response.get_json()["detail"]

    def count(cur: Any) -> Any:
        cur.execute("SELECT count(*) FROM thermo.image_objects WHERE object_key = %s", (key,))
        return cur.fetchone()

    assert clients.postgres.transaction(count) == (0,)


# --- camera-reconcile ---------------------------------------------------------------------


def ping(schedule: str) -> CloudEvent:
    attributes = {
        "type": "dev.knative.sources.ping",
        "source": f"/apis/v1/namespaces/objectflow/pingsources/{schedule}",
        "id": uuid.uuid4().hex,
    }
    return CloudEvent(attributes, {})


def test_reconcile_republishes_what_exists_and_fails_what_is_gone(
    app: App, service_env: dict[str, str], queue: BoundQueue
) -> None:
    camera = uid()
    s3, watch = s3_client(service_env), app("watch")
    keys = [f"{camera}/{name}.jpg" for name in ("kept", "gone", "worn-out")]
    for key in keys:
        s3.put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(200))
        assert post(watch, s3_event(service_env, "thermo-raw", key)).status_code == 204
    s3.delete_object(Bucket="thermo-raw", Key=keys[1])
    # Stuck for a century: only rows aged by a test are that old, and a first run settles any
    # an interrupted earlier run left behind, so the counts below are this test's own.
    os.environ["RECONCILE_PENDING_THRESHOLD_MS"] = str(50 * 365 * 24 * 3600 * 1000)
    assert post(app("reconcile"), ping("camera-reconcile")).status_code == 200
    sql(service_env, "UPDATE thermo.image_objects SET updated_at = now() - interval '100 years', "
        "republish_count = CASE WHEN object_key = %s THEN 5 ELSE 0 END "
        "WHERE object_key = ANY(%s)", keys[2], keys)  # fmt: skip
    queue.messages()

    response = post(app("reconcile"), ping("camera-reconcile"))
    assert response.status_code == 200
    assert response.headers["ce-type"] == "objectflow.camera.reconciled.v1"
    assert response.get_json() == {"checked": 3, "republished": 1, "failed": 2, "errors": 0}
    by_key = {r["object_key"]: r for r in rows(service_env, camera)}
    assert by_key[keys[0]]["status"] == "pending" and by_key[keys[0]]["republish_count"] == 1
    assert by_key[keys[1]]["status"] == "failed"
    assert "no longer exists" in by_key[keys[1]]["failure_reason"]
    assert by_key[keys[2]]["failure_reason"] == "still pending after 5 re-publishes"
    republished = [m for m in queue.messages() if m["objectKey"] in keys]
    assert [(m["objectKey"], m["_routing_key"]) for m in republished][-1] == (
        keys[0],
        "raw.created",
    )

    # The next run finds nothing: the republished item is fresh again.
    assert post(app("reconcile"), ping("camera-reconcile")).get_json()["checked"] == 0


# --- camera-sweep and camera-api -----------------------------------------------------------


def test_sweep_finishes_complete_captures_and_expires_stale_partials(
    app: App, service_env: dict[str, str]
) -> None:
    from functions.camera import capture

    camera, other = uid(), uid()
    finished_id = str(uuid.uuid4())
    image = camera_sim.image(2000, seed=9)
    store = capture.chunk_store()
    # A complete capture whose upload never happened (as after a long MinIO outage) ...
    for p in camera_sim.Capture(camera, image, 3, image_id=finished_id).payloads():
        store.store(camera, p["index"], 3, base64.b64decode(p["data"]), finished_id)
    # ... and a partial one, in a camera session, idle for an hour.
    store.store(other, 0, 3, b"part", None)
    r = redis_client(service_env)
    session = r.get(f"camera_session:{other}").decode()
    for image_id in (finished_id, session):
        r.zadd("camera_captures", {image_id: time.time() - 3600})
    r.hset(f"image_chunks:{session}:meta", "last_at", time.time() - 3600)

    api = app("api")
    status = api.get(f"/captures/{session}").json()
    assert (status["status"], status["received"], status["total"], status["missing"]) == (
        "partial", 1, 3, [1, 2],
    )  # fmt: skip

    response = post(app("sweep"), ping("camera-sweep"))
    assert (
        response.status_code == 200 and response.headers["ce-type"] == "objectflow.camera.swept.v1"
    )
    report = response.get_json()
    assert report["completed"] >= 1 and report["expired"] >= 1
    assert [sha256(b) for b in objects(service_env, camera).values()] == [sha256(image)]
    assert not r.exists(f"image_chunks:{session}", f"camera_session:{other}")

    done = api.get(f"/captures/{finished_id}").json()
    assert done["status"] == "processed" and done["missing"] == []
    assert done["record"]["checksum"] == sha256(image) and done["record"]["status"] == "pending"
    assert api.get(f"/captures/{uuid.uuid4()}").status_code == 404
    assert api.get("/captures/..").status_code in (400, 404)
    health = api.get("/health").json()
    assert health["status"] == "ok" and datetime.fromisoformat(health["ts"])
