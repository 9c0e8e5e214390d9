"""Regressions of issue 10: the camera pipeline tried the way a careless camera, a misconfigured
uploader or an attacker would, through the running runtime and its real services.

One test per numbered defect (and the "also seen" ones); each failed on the code before the fix.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests
from cloudevents.http import CloudEvent

from devstack import wiring
from devstack.camera import sim as camera_sim
from devstack.config import PATHS
from functions.runtime import idempotency
from tests.camera_support import BoundQueue, objects, redis_client, rows, sha256, snapshot, sql
from tests.e2e.camera.conftest import chunk_letters, letters, notify, uid
from tests.e2e.camera.test_pipeline import function_metric
from tests.support import E2E_OVERLAY, RecordingSink, s3_client, wait_for

NOTIFY_QUEUE = PATHS.data("minio") / "notify-queue"
EMPTY = {"redis": {}, "index": {}, "objects": [], "rows": []}


def objectflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `objectflow` CLI as a user runs it, output captured (so stdout is a pipe)."""
    command = [sys.executable, "-m", "devstack.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def publish_raw(client: Any, topic: str, payload: dict[str, Any] | bytes) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client.publish(topic, body, qos=1).wait_for_publish(10)


def chunk(camera: str, index: int, total: int, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"id": camera, "index": index, "total": total,
            "data": base64.b64encode(data).decode(), **extra}  # fmt: skip


def split(image: bytes, *cuts: int) -> list[bytes]:
    edges = [0, *cuts, len(image)]
    return [image[a:b] for a, b in itertools.pairwise(edges)]


def record(bucket: str, key: str, **object_fields: Any) -> dict[str, Any]:
    """One record of a MinIO notification, as MinIO writes it."""
    return {
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, **object_fields}},
    }


def queued_notifications() -> list[str]:
    return [str(p) for p in NOTIFY_QUEUE.rglob("*") if p.is_file()]


# --- 1. a zero-byte object blocked every MinIO notification ---------------------------------------


def test_1_zero_byte_objects_and_unreadable_notifications_block_nothing(
    stack_env: dict[str, str],
    values: wiring.Values,
    camera_client: Callable[[], Any],
    queue: BoundQueue,
) -> None:
    camera = uid()
    # MinIO leaves `size` out of the record of an empty object: that is a size of 0, never a 5xx
    # (MinIO would retry it every 3 s, holding up every notification queued behind it).
    answer = notify(stack_env, values, {"Records": [record("e2e-unwatched", f"{camera}/empty")]})
    assert (answer.status_code, answer.json()) == (200, {"forwarded": 1}), answer.text

    # What the adapter cannot read is a 400 naming the reason, kept in the dead-letter store.
    marker = uuid.uuid4().hex
    unreadable = {"Records": [{"eventName": "s3:ObjectCreated:Put", "marker": marker}]}
    answer = notify(stack_env, values, unreadable)
    assert answer.status_code == 400 and "eventTime" in answer.json()["detail"], answer.text
    [letter] = letters(stack_env, "cloudevent::text LIKE %s", f"%{marker}%")
    assert letter["status_code"] == 400 and "eventTime" in letter["response_body"]

    # camera-ingest refuses an empty chunk (so an empty capture can never be uploaded).
    client = camera_client()
    image_id = str(uuid.uuid4())
    publish_raw(client, camera_sim.topic(camera), chunk(camera, 0, 1, b"", image_id=image_id))
    [(status, detail)] = wait_for(lambda: chunk_letters(stack_env, "image_id", image_id))
    assert status == 422 and "empty" in detail
    assert snapshot(stack_env, camera, image_id) == {**EMPTY, "index": {image_id: None}}

    # Zero-byte objects in both buckets, then an ordinary capture: its row and raw.created
    # arrive within seconds, and MinIO's queue of undelivered notifications drains.
    s3 = s3_client(stack_env)
    s3.put_object(Bucket="thermo-raw", Key=f"{camera}/zero.jpg", Body=b"")
    s3.put_object(Bucket="thermo-processed", Key=f"{camera}/zero.jpg", Body=b"")
    capture = camera_sim.Capture(camera, camera_sim.image(3000, seed=1), 3)
    camera_sim.publish(client, camera, capture.payloads())
    [key] = wait_for(
        lambda: [k for k in objects(stack_env, camera) if k != f"{camera}/zero.jpg"],
        timeout=15,
        what="the capture's object",
    )
    wait_for(lambda: queue.about(key), timeout=10, what="raw.created of the capture")
    assert any(r["object_key"] == key for r in rows(stack_env, camera))
    zero = wait_for(lambda: queue.about(f"{camera}/zero.jpg"), timeout=10, what="zero-byte one")
    assert zero[0]["size"] == 0
    wait_for(lambda: not queued_notifications(), timeout=30, what="an empty MinIO notify queue")


# --- 2. a chunk identical to one of an earlier capture was dropped as a duplicate -----------------


def test_2_a_chunk_identical_to_an_earlier_captures_is_kept(
    stack_env: dict[str, str], camera_client: Callable[[], Any]
) -> None:
    camera, client = uid(), camera_client()
    images = [camera_sim.image(2000, seed=s) for s in (1, 2)]  # both end with \xff\xd9
    for image in images:
        head, tail = split(image, len(image) - 2)
        camera_sim.publish(client, camera, [chunk(camera, 0, 2, head), chunk(camera, 1, 2, tail)])
    wait_for(lambda: len(objects(stack_env, camera)) == 2, what="both captures stored")
    assert sorted(map(sha256, objects(stack_env, camera).values())) == sorted(map(sha256, images))
    # The pre-check window is what redelivery needs, not a week.
    r = redis_client(stack_env)
    handled = [k for row in rows(stack_env, camera)
               for k in r.smembers(f"image_chunks:{row['image_id']}:events")]  # fmt: skip
    assert len(handled) == 4 and max(r.ttl(k) for k in handled) <= 3600


# --- 3. the documented reset recipe did not reset -------------------------------------------------


def test_3_camera_reset_clears_every_key_so_the_capture_is_processed_again(
    stack_env: dict[str, str], send: Callable[[CloudEvent], requests.Response]
) -> None:
    camera, image_id = uid(), str(uuid.uuid4())
    image = camera_sim.image(3000, "png", seed=3)
    source = f"e2e://camera-reset/{camera}"
    events = [
        CloudEvent(
            {
                "type": "objectflow.camera.chunk.received.v1",
                "source": source,
                "id": f"chunk-{n}",
                "subject": camera,
                "datacontenttype": "application/json",
            },
            payload,
        )
        for n, payload in enumerate(camera_sim.Capture(camera, image, 3, image_id).payloads())
    ]
    r = redis_client(stack_env)
    for event in events:
        assert send(event).status_code == 202
    wait_for(lambda: r.exists(f"processed:{image_id}"), what="processed")
    handled = [idempotency.key("camera-ingest", source, e["id"]) for e in events]
    wait_for(lambda: r.exists(*handled) == 3, what="the adapter's handled keys")
    s3_client(stack_env).delete_object(Bucket="thermo-raw", Key=f"{camera}/{image_id}.png")

    done = objectflow("camera", "reset", image_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert image_id in done.stdout
    left = [k.decode() for k in r.keys(f"*{image_id}*")] + [k for k in handled if r.exists(k)]
    assert left == [] and r.zscore("camera_captures", image_id) is None

    for event in events:  # the same events again: processed again, not "duplicate"
        assert send(event).status_code == 202
    wait_for(lambda: r.exists(f"processed:{image_id}"), what="processed again")
    wait_for(lambda: objects(stack_env, camera), what="uploaded again")
    assert [sha256(b) for b in objects(stack_env, camera).values()] == [sha256(image)]
    nothing = objectflow("camera", "reset", "no-such-capture")
    assert nothing.returncode == 0 and "nothing" in nothing.stdout, nothing.stdout


# --- 4. a reused image_id after processing was silently dropped -----------------------------------


def test_4_a_reused_image_id_after_processing_is_rejected(
    stack_env: dict[str, str], camera_client: Callable[[], Any]
) -> None:
    x, y, image_id = uid(), uid(), f"img-{uuid.uuid4().hex[:8]}"
    client = camera_client()
    capture = camera_sim.Capture(x, camera_sim.image(2000, seed=4), 2, image_id)
    camera_sim.publish(client, x, capture.payloads())
    wait_for(lambda: redis_client(stack_env).exists(f"processed:{image_id}"), what="processed")
    stored = objects(stack_env, x)

    replay = capture.payloads()[0]
    publish_raw(client, camera_sim.topic(x), replay)  # a true replay: harmless
    publish_raw(client, camera_sim.topic(x), chunk(x, 0, 2, b"other bytes", image_id=image_id))
    publish_raw(client, camera_sim.topic(y), chunk(y, 0, 2, b"y's image", image_id=image_id))
    found = wait_for(lambda: len(chunk_letters(stack_env, "image_id", image_id)) == 2 and
                     chunk_letters(stack_env, "image_id", image_id))  # fmt: skip
    details = " | ".join(detail for _status, detail in found)
    assert [status for status, _ in found] == [422, 422]
    assert "another camera" in details and "different content" in details, details
    assert objects(stack_env, x) == stored and objects(stack_env, y) == {}


# --- 5. the topic's camera id was never checked against the payload's -----------------------------


def test_5_the_topic_is_the_camera_identity(
    stack_env: dict[str, str], camera_client: Callable[[], Any]
) -> None:
    a, b, client = uid(), uid(), camera_client()
    cases = {
        f"camera/{a}/image_json": b,  # B's id on A's topic
        "camera/../image_json": "..",
        "camera/กล้อง/image_json": "กล้อง",
    }
    markers = {}
    for topic, payload_id in cases.items():
        markers[topic] = str(uuid.uuid4())
        publish_raw(client, topic, chunk(payload_id, 0, 1, camera_sim.image(700, seed=5),
                                         image_id=markers[topic]))  # fmt: skip
    for topic, marker in markers.items():
        [(status, detail)] = wait_for(lambda m=marker: chunk_letters(stack_env, "image_id", m),
                                      what=f"the dead letter of {topic}")  # fmt: skip
        assert status == 422, (topic, detail)
    assert snapshot(stack_env, a) == EMPTY and snapshot(stack_env, b) == EMPTY


# --- 6. a raw rewrite during processing was announced with the processed object's fields ----------


def test_6_each_announcement_describes_the_object_written(
    stack_env: dict[str, str], queue: BoundQueue
) -> None:
    camera, s3 = uid(), s3_client(stack_env)
    key = f"{camera}/{uuid.uuid4()}.jpg"
    s3.put_object(Bucket="thermo-raw", Key=key, Body=camera_sim.image(900, seed=6))
    wait_for(lambda: queue.about(key), what="raw.created")
    s3.put_object(Bucket="thermo-processed", Key=key, Body=camera_sim.image(700, "png", seed=7))
    wait_for(lambda: len(queue.about(key)) == 2, what="processed.created")
    rewritten = camera_sim.image(1500, seed=8)
    s3.put_object(Bucket="thermo-raw", Key=key, Body=rewritten)
    [*_, last] = wait_for(lambda: len(queue.about(key)) == 3 and queue.about(key))
    head = s3.head_object(Bucket="thermo-raw", Key=key)
    assert last["_routing_key"] == "raw.created"
    assert (last["bucket"], last["objectKey"], last["size"], last["etag"], last["status"]) == (
        "thermo-raw", key, len(rewritten), head["ETag"].strip('"'), "pending"
    )  # fmt: skip
    assert rows(stack_env, camera)[0]["status"] == "processing"  # the row still moves forward


# --- 7. one lost chunk mixed the camera's next capture into it ------------------------------------


def test_7_a_lost_chunk_never_mixes_two_captures(
    stack_env: dict[str, str],
    values: wiring.Values,
    camera_client: Callable[[], Any],
    queue: BoundQueue,
) -> None:
    client, r = camera_client(), redis_client(stack_env)
    # Capture 1 loses its first chunk; capture 2 (same total) and 3 (another total) arrive whole.
    camera = uid()
    first, second, third = (camera_sim.image(3000, seed=s) for s in (71, 72, 73))
    camera_sim.publish(client, camera, camera_sim.Capture(camera, first, 3).payloads()[1:])
    camera_sim.publish(client, camera, camera_sim.Capture(camera, second, 3).payloads())
    camera_sim.publish(client, camera, camera_sim.Capture(camera, third, 4).payloads())
    wait_for(lambda: len(objects(stack_env, camera)) == 2, what="captures 2 and 3")
    assert sorted(map(sha256, objects(stack_env, camera).values())) == sorted(
        map(sha256, [second, third])
    )
    assert letters(stack_env, "event_subject = %s", camera) == []

    # Capture 4 loses its last chunk; after the idle gap, capture 5 begins with the very same
    # first chunk (same header), which is then a new capture rather than a redelivery.
    camera = uid()
    fourth, fifth = camera_sim.image(3000, seed=74), camera_sim.image(3000, seed=75)
    assert fourth[:200] == fifth[:200]
    camera_sim.publish(client, camera, [chunk(camera, 0, 3, fourth[:200]),
                                        chunk(camera, 1, 3, fourth[200:1000])])  # fmt: skip
    session = wait_for(lambda: r.get(f"camera_session:{camera}"), what="the session").decode()
    wait_for(lambda: r.hlen(f"image_chunks:{session}") == 2, what="both chunks")
    idle = float(values.functions["camera-ingest"].env["CAMERA_SESSION_IDLE_SECONDS"])
    last_at = float(r.hget(f"image_chunks:{session}:meta", "last_at") or 0)
    wait_for(lambda: time.time() > last_at + idle, timeout=idle + 5, what="the idle gap")
    parts = split(fifth, 200, 1000)
    camera_sim.publish(client, camera, [chunk(camera, i, 3, p) for i, p in enumerate(parts)])
    stored = wait_for(lambda: objects(stack_env, camera), what="capture 5")
    assert [sha256(b) for b in stored.values()] == [sha256(fifth)]

    # An assembled image that does not decode is quarantined and failed, never announced.
    camera, image_id = uid(), str(uuid.uuid4())
    broken = camera_sim.corrupt(2000, "png", seed=76)
    camera_sim.publish(client, camera, camera_sim.Capture(camera, broken, 2, image_id).payloads())
    [row] = wait_for(lambda: rows(stack_env, camera), what="the failed row")
    assert row["status"] == "failed" and "decode" in row["failure_reason"]
    assert row["object_key"] == f"quarantine/{camera}/{image_id}.png"
    body = s3_client(stack_env).get_object(Bucket="thermo-raw", Key=row["object_key"])["Body"]
    assert body.read() == broken and objects(stack_env, camera) == {}
    assert queue.about(row["object_key"]) == []


# --- 8. a new write of earlier bytes was not announced --------------------------------------------


def test_8_every_write_is_announced_and_a_redelivered_notification_is_not(
    stack_env: dict[str, str], values: wiring.Values, queue: BoundQueue
) -> None:
    camera, s3 = uid(), s3_client(stack_env)
    key = f"{camera}/{uuid.uuid4()}.jpg"
    a, b = camera_sim.image(800, seed=81), camera_sim.image(800, seed=82)
    etags = []
    for body in (a, b, a):
        etags.append(s3.put_object(Bucket="thermo-raw", Key=key, Body=body)["ETag"].strip('"'))
        count = len(etags)
        wait_for(lambda n=count: len(queue.about(key)) == n, what=f"announcement {count}")
    assert [m["etag"] for m in queue.about(key)] == etags

    other = f"{camera}/{uuid.uuid4()}.jpg"
    once = record("thermo-raw", other, size=5, eTag="e" * 32, sequencer="18A0B1C2D3E4F5A6")
    handled = re.escape('objectflow_events_total{function="camera-watch",')
    before = function_metric(values, "camera-watch", handled)
    for _ in range(2):  # MinIO retrying the same queued notification
        assert notify(stack_env, values, {"Records": [once]}).status_code == 200
    wait_for(lambda: function_metric(values, "camera-watch", handled) >= before + 2)
    assert len(queue.about(other)) == 1


# --- 9. dlq redrive dropped the body of non-JSON dead letters -------------------------------------


def test_9_dlq_redrive_sends_exactly_the_stored_event(
    stack_env: dict[str, str], camera_client: Callable[[], Any]
) -> None:
    camera = uid()
    payload = b"\x00\xffnot json " + uuid.uuid4().hex.encode()
    publish_raw(camera_client(), camera_sim.topic(camera), payload)
    [letter] = wait_for(lambda: letters(stack_env, "event_subject = %s", camera))
    assert letter["status_code"] == 415 and "data_base64" in letter["cloudevent"]

    # `dlq list` in a pipe: one line per letter, nothing cut or wrapped.
    listed = objectflow("dlq", "list", "--limit", "500", env=_columns(80))
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if x.split("\t")[0] == str(letter["id"])]
    assert stored_id(letter) in line and "415" in line and letter["event_type"] in line

    with RecordingSink() as sink:
        sql(stack_env, "UPDATE objectflow.dead_letters SET destination = %s WHERE id = %s",
            sink.url, letter["id"])  # fmt: skip
        done = objectflow("dlq", "redrive", str(letter["id"]))
        assert done.returncode == 0, done.stdout + done.stderr
        [event] = sink.accepted()
    stored = letter["cloudevent"]
    assert event.get_data() == payload
    attributes = {k: v for k, v in stored.items() if k != "data_base64"}
    assert {k: event.get(k) for k in attributes} == attributes


def stored_id(letter: dict[str, Any]) -> str:
    return str(letter["cloudevent"]["id"])


def _columns(width: int) -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": str(width)}


# --- also seen ------------------------------------------------------------------------------------


def test_tick_prints_the_runs_reply_counts() -> None:
    done = objectflow("tick", "camera-sweep", "--values", str(E2E_OVERLAY))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "objectflow.camera.swept.v1" in done.stdout and "scanned" in done.stdout, done.stdout


def test_camera_api_answers_json_for_an_id_ending_in_a_newline(values: wiring.Values) -> None:
    port = values.function_ports()["camera-api"]
    for path in ("/captures/abc%0A", "/captures/%0A"):
        answer = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert answer.status_code in (400, 404), (path, answer.status_code)
        assert answer.headers["content-type"].startswith("application/json"), path
        assert answer.json()["error"], path
