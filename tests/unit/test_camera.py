"""Camera pipeline logic that needs no server: chunk validation, statuses, keys, messages."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from devstack.camera import sim as camera_sim
from functions.camera import capture, ingest, messages, records, watch
from functions.camera.events import CameraChunk
from functions.runtime import settings
from functions.runtime.errors import InvalidData, PayloadTooLarge
from functions.sources.events import S3ObjectCreated

ROOT = Path(__file__).resolve().parents[2]


def chunk(**overrides: Any) -> dict[str, Any]:
    return {"id": "cam-1", "index": 0, "total": 2, "data": base64.b64encode(b"abc").decode()} | (
        overrides
    )


def test_a_camera_chunk_decodes_and_ignores_extra_fields() -> None:
    parsed = CameraChunk.model_validate(chunk(timestamp=123))
    assert parsed.data == b"abc" and parsed.image_id is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (chunk(data="not base64!"), "data"),
        (chunk(data=123), "data"),
        (chunk(index=2), "index"),
        (chunk(index=-1), "index"),
        (chunk(index="1"), "index"),
        (chunk(total=0), "total"),
        (chunk(id="../etc"), "id"),
        (chunk(id="a/b"), "id"),
        (chunk(id=""), "id"),
        (chunk(image_id=".."), "image_id"),
        ({k: v for k, v in chunk().items() if k != "total"}, "total"),
    ],
)
def test_bad_chunks_are_rejected_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        CameraChunk.model_validate(payload)


def test_limits_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMERA_MAX_CHUNKS", "4")
    monkeypatch.setenv("CAMERA_MAX_CHUNK_BYTES", "2")
    settings.reset()
    with pytest.raises(InvalidData, match="CAMERA_MAX_CHUNKS"):
        capture.check_limits(CameraChunk.model_validate(chunk(total=5)))
    with pytest.raises(PayloadTooLarge, match="CAMERA_MAX_CHUNK_BYTES"):
        capture.check_limits(CameraChunk.model_validate(chunk()))
    settings.reset()


@pytest.mark.parametrize(
    ("kind", "key", "content_type"),
    [
        ("jpeg", "cam/img.jpg", "image/jpeg"),
        ("png", "cam/img.png", "image/png"),
        ("bin", "cam/img.bin", "application/octet-stream"),
    ],
)
def test_object_key_and_type_come_from_magic_bytes(kind: str, key: str, content_type: str) -> None:
    assert capture.object_key("cam", "img", camera_sim.image(64, kind)) == (key, content_type)


@pytest.mark.parametrize(
    ("current", "incoming", "expected"),
    [
        ("pending", "processing", "processing"),
        ("processing", "pending", "processing"),  # a late raw notification
        ("completed", "processing", "completed"),
        ("pending", "completed", "completed"),
        ("failed", "pending", "pending"),  # the object exists after all
    ],
)
def test_status_never_moves_backwards(current: str, incoming: str, expected: str) -> None:
    assert records.next_status(current, incoming) == expected


def s3_event(key: str, metadata: dict[str, str] | None = None) -> S3ObjectCreated:
    return S3ObjectCreated(
        bucket="thermo-raw",
        key=key,
        size=1,
        event_name="s3:ObjectCreated:Put",
        event_time=datetime.now(UTC),
        user_metadata=metadata or {},
    )


def test_device_uid_from_metadata_else_first_key_segment() -> None:
    assert watch.device_uid(s3_event("cam-7/2026/x.jpg")) == "cam-7"
    assert watch.device_uid(s3_event("whatever/x.jpg", {"device-uid": "cam-9"})) == "cam-9"
    for key in ("x.jpg", "/x.jpg", "../x.jpg"):
        with pytest.raises(InvalidData, match="no usable device uid"):
            watch.device_uid(s3_event(key))


def test_watcher_message_keeps_the_source_format() -> None:
    now = datetime(2026, 8, 2, 11, 7, 35, tzinfo=UTC)
    item = records.ImageObject(
        id=5, device_id=2, device_uid="cam-1", image_id="i", object_key="cam-1/i.jpg",
        bucket="thermo-raw", status="pending", checksum="c", size=10, etag="e",
        content_type="image/jpeg", failure_reason=None, republish_count=0,
        created_at=now, updated_at=now,
    )  # fmt: skip
    written = messages.Written.current(item)
    assert json.loads(messages.body(item, written, "raw.created", now)) == {
        "eventType": "raw.created",
        "imageObjectId": 5,
        "deviceId": 2,
        "deviceUid": "cam-1",
        "bucket": "thermo-raw",
        "objectKey": "cam-1/i.jpg",
        "status": "pending",
        "size": 10,
        "etag": "e",
        "eventTime": "2026-08-02T11:07:35Z",
    }


def test_the_message_describes_the_object_written_not_the_row() -> None:
    now = datetime(2026, 8, 2, 11, 7, 35, tzinfo=UTC)
    item = records.ImageObject(
        id=5, device_id=2, device_uid="cam-1", image_id="i", object_key="cam-1/i.jpg",
        bucket="thermo-processed", status="processing", checksum="c", size=99, etag="p",
        content_type="image/jpeg", failure_reason=None, republish_count=0,
        created_at=now, updated_at=now,
    )  # fmt: skip
    rewrite = messages.Written("thermo-raw", "cam-1/i.jpg", "pending", 10, "r")
    sent = json.loads(messages.body(item, rewrite, "raw.created", now))
    assert (sent["bucket"], sent["status"], sent["size"], sent["etag"]) == (
        "thermo-raw", "pending", 10, "r"
    )  # fmt: skip
    assert (sent["imageObjectId"], sent["deviceUid"]) == (5, "cam-1")


def test_each_write_is_a_version_and_a_redelivery_is_not() -> None:
    first = s3_event("cam-1/x.jpg").model_copy(update={"etag": "a", "sequencer": "01"})
    rewrite = first.model_copy(update={"sequencer": "02"})  # same bytes written again
    assert watch.version(first) == watch.version(first.model_copy())
    assert watch.version(first) != watch.version(rewrite)


@pytest.mark.parametrize(
    ("kind", "good"),
    [("jpeg", True), ("png", True)],
)
def test_decode_check_passes_real_images_and_fails_broken_ones(kind: str, good: bool) -> None:
    mime = f"image/{kind}"
    image = camera_sim.image(3000, kind, seed=1)
    assert capture.undecodable(image, mime) is None
    assert "does not decode" in (capture.undecodable(camera_sim.corrupt(3000, kind), mime) or "")
    assert "does not decode" in (capture.undecodable(image[: len(image) // 2], mime) or "")
    other = camera_sim.image(3000, kind, seed=2)
    if kind == "png":  # a PNG mixed from two never decodes (each chunk has a CRC)
        mixed = image[:1000] + other[1000:]
        assert "does not decode" in (capture.undecodable(mixed, mime) or "")
    assert capture.undecodable(b"RAW0 whatever", "application/octet-stream") is None


def test_empty_chunks_and_foreign_identities_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        CameraChunk.model_validate({"id": "cam", "index": 0, "total": 1, "data": ""})
    chunk = CameraChunk.model_validate({"id": "cam-b", "index": 0, "total": 1, "data": "eA=="})
    for subject, field in (("cam-a", "id"), ("..", "subject"), ("กล้อง", "subject"),
                           ("cam-b\n", "subject"), (None, "subject")):  # fmt: skip
        with pytest.raises(InvalidData) as caught:
            ingest.check_identity(subject, chunk)
        assert caught.value.field == field, subject
    ingest.check_identity("cam-b", chunk)


def test_simulated_capture_splits_and_rejoins() -> None:
    image = camera_sim.image(1000, seed=3)
    payloads = camera_sim.Capture("cam", image, 7, image_id="x").payloads()
    assert [p["index"] for p in payloads] == list(range(7))
    assert b"".join(base64.b64decode(p["data"]) for p in payloads) == image


def test_camera_api_answers_json_for_ids_with_a_newline() -> None:
    from tests.support import http_app

    os.environ.update(REDIS_HOST="127.0.0.1", REDIS_PORT="1")  # never reached: refused first
    api = http_app(ROOT / "functions" / "camera" / "api.py", "camera_api")
    for path in ("/captures/abc%0A", "/captures/%0A", "/captures/..%0A"):
        answer = api.get(path)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["field"] == "image_id", path
