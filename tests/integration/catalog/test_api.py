"""catalog-api against the real PostgreSQL, MinIO and Redis: uploads, links, deletes, and every
bad input answered with its specific 4xx and nothing written."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from functions.catalog import service
from functions.runtime import clients
from tests.catalog_support import (
    BAD_FILES,
    BUCKET,
    jpeg,
    new_product,
    png,
    redis_client,
    sha256,
    sql,
    state,
)
from tests.support import RecordingSink, s3_client

MiB = 1024 * 1024


def upload_multipart(api: Any, product_id: str, data: bytes, name: str = "photo.jpg") -> Any:
    return api.post(f"/products/{product_id}/images", files={"file": (name, data, "image/jpeg")})


def upload_raw(api: Any, product_id: str, data: bytes, content_type: str) -> Any:
    return api.post(
        f"/products/{product_id}/images", content=data, headers={"content-type": content_type}
    )


def test_upload_list_download_delete(
    api: Any, catalog_env: dict[str, str], broker_sink: RecordingSink
) -> None:
    product = new_product(catalog_env)
    photo, drawing = jpeg(320, 200, seed=1), png(100, 80, seed=2)

    first = upload_multipart(api, product, photo)
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {
        "image_id",
        "product_id",
        "key",
        "content_type",
        "size",
        "sha256",
        "width",
        "height",
    }
    assert body["product_id"] == product
    assert body["key"] == f"products/{product}/{body['image_id']}.jpg"
    assert (body["content_type"], body["size"], body["sha256"]) == (
        "image/jpeg",
        len(photo),
        sha256(photo),
    )
    assert (body["width"], body["height"]) == (320, 200)
    second = upload_raw(api, product, drawing, "image/png")
    assert second.status_code == 201, second.text
    assert second.json()["key"].endswith(".png")

    listed = api.get(f"/products/{product}/images")
    assert listed.status_code == 200
    assert listed.json()["cached"] is False
    again = api.get(f"/products/{product}/images").json()
    assert again["cached"] is True
    assert [i["image_id"] for i in again["images"]] == [body["image_id"], second.json()["image_id"]]
    for link, data in zip(again["images"], (photo, drawing), strict=True):
        assert link["url"].startswith("http://127.0.0.1:9000/")
        assert requests.get(link["url"], timeout=10).content == data

    record = api.get(f"/images/{body['image_id']}")
    assert record.status_code == 200 and record.json()["sha256"] == sha256(photo)

    gone = api.delete(f"/images/{body['image_id']}")
    assert gone.status_code == 202, gone.text
    assert gone.json()["object_deletion"] == "broker"
    [event] = broker_sink.accepted(lambda e: e["type"] == "objectflow.catalog.image.deleted.v1")
    assert event.get_data()["key"] == body["key"]
    assert api.get(f"/images/{body['image_id']}").status_code == 404
    after = api.get(f"/products/{product}/images").json()
    assert after["cached"] is False  # the delete retired the cached links
    assert [i["image_id"] for i in after["images"]] == [second.json()["image_id"]]


def test_links_expire_after_the_cache(api: Any, catalog_env: dict[str, str]) -> None:
    product = new_product(catalog_env)
    upload_raw(api, product, jpeg(), "image/jpeg")
    listed = api.get(f"/products/{product}/images").json()
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(listed["images"][0]["expires_at"].replace("Z", "+00:00"))
    ttl = redis_client(catalog_env).ttl(f"catalog:links:{product}")
    assert 0 < ttl <= 3000
    assert (expires - datetime.now(UTC)).total_seconds() > ttl + 500


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("form", ["multipart", "raw"])
def test_bad_files_are_refused_and_nothing_is_written(
    api: Any, catalog_env: dict[str, str], name: str, form: str
) -> None:
    product = new_product(catalog_env)
    before = state(catalog_env, product)
    data, status, kind = BAD_FILES[name]
    if form == "multipart":
        answer = upload_multipart(api, product, data, name="photo.jpg")
    else:
        answer = upload_raw(api, product, data, "application/octet-stream")
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == kind and answer.json()["field"] == "file"
    assert state(catalog_env, product) == before


def test_too_large_is_413_while_streaming(api: Any, catalog_env: dict[str, str]) -> None:
    product = new_product(catalog_env)
    before = state(catalog_env, product)
    big = jpeg()[:-2] + b"\0" * (5 * MiB - len(jpeg())) + b"\xff\xd9"
    assert len(big) == 5 * MiB
    oversized = big + b"\0"
    for answer in (
        upload_multipart(api, product, oversized),
        upload_raw(api, product, oversized, "image/jpeg"),
        # no Content-Length: the limit is counted on the bytes as they arrive
        api.post(
            f"/products/{product}/images",
            content=iter([oversized[:MiB]] * 6),
            headers={"content-type": "image/jpeg"},
        ),
    ):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "image-too-large"
    assert state(catalog_env, product) == before


def test_wrong_content_type_and_bad_ids(api: Any, catalog_env: dict[str, str]) -> None:
    product = new_product(catalog_env)
    before = state(catalog_env, product)
    wrong = upload_raw(api, product, jpeg(), "text/plain")
    assert (wrong.status_code, wrong.json()["field"]) == (415, "content-type")
    mismatch = upload_raw(api, product, jpeg(), "image/png")
    assert (mismatch.status_code, mismatch.json()["error"]) == (415, "unsupported-image")
    not_uuid = upload_raw(api, "not-a-uuid", jpeg(), "image/jpeg")
    assert (not_uuid.status_code, not_uuid.json()["field"]) == (422, "product_id")
    no_field = api.post(f"/products/{product}/images", files={"photo": ("a.jpg", jpeg())})
    assert (no_field.status_code, no_field.json()["field"]) == (422, "file")
    assert state(catalog_env, product) == before

    unknown = str(uuid.uuid4())
    assert upload_raw(api, unknown, jpeg(), "image/jpeg").status_code == 404
    assert api.get(f"/products/{unknown}/images").status_code == 404
    assert state(catalog_env, unknown) == {**before, "product": [], "links": None}
    missing = api.delete(f"/images/{uuid.uuid4()}")
    assert (missing.status_code, missing.json()["error"]) == (404, "not-found")
    assert api.get(f"/images/{uuid.uuid4()}").status_code == 404
    assert api.delete("/images/nope").status_code == 422


def test_deleted_product_takes_no_uploads(api: Any, catalog_env: dict[str, str]) -> None:
    product = new_product(catalog_env)
    sql(
        catalog_env, "UPDATE catalog.products SET deleted_at = now() WHERE product_id = %s", product
    )
    before = state(catalog_env, product)
    assert upload_raw(api, product, png(), "image/png").status_code == 404
    assert api.get(f"/products/{product}/images").status_code == 404
    assert state(catalog_env, product) == before


def test_delete_when_the_broker_refuses_goes_to_failed_deletes(
    api: Any, catalog_env: dict[str, str], broker_sink: RecordingSink
) -> None:
    product = new_product(catalog_env)
    key = upload_raw(api, product, png(), "image/png").json()["key"]
    broker_sink.status = 503
    answer = api.delete(f"/images/{key.split('/')[-1].split('.')[0]}")
    assert answer.status_code == 202 and answer.json()["object_deletion"] == "failed_deletes"
    assert redis_client(catalog_env).sismember("failed_deletes", key)
    report = service.retry_deletes()
    assert report.deleted >= 1
    assert not redis_client(catalog_env).sismember("failed_deletes", key)
    assert state(catalog_env, product)["objects"] == []


def test_a_commit_that_fails_after_the_upload_leaves_no_object(
    api: Any, catalog_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload succeeds, then PostgreSQL drops the session before the commit (a real
    server-side termination): the answer is 503 and neither row nor object remains."""
    from functions.catalog import records

    product = new_product(catalog_env)
    before = state(catalog_env, product)
    real_bump = records.bump_links

    def bump_then_lose_the_session(cur: Any, product_id: uuid.UUID) -> None:
        real_bump(cur, product_id)
        with clients.postgres._pool().getconn() as other, other.cursor() as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (cur.connection.get_backend_pid(),))
            other.commit()
        clients.postgres._pool().putconn(other)

    monkeypatch.setattr(records, "bump_links", bump_then_lose_the_session)
    answer = upload_raw(api, product, jpeg(), "image/jpeg")
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"]
    assert state(catalog_env, product) == before


def test_orphans_older_than_the_age_are_swept(catalog_env: dict[str, str]) -> None:
    from datetime import UTC, datetime, timedelta

    product = new_product(catalog_env)
    orphan = f"products/{product}/{uuid.uuid4()}.jpg"
    s3_client(catalog_env).put_object(Bucket=BUCKET, Key=orphan, Body=jpeg())
    assert service.retry_deletes().orphans_removed >= 0
    assert state(catalog_env, product)["objects"] == [orphan]  # younger than an hour: kept
    later = datetime.now(UTC) + timedelta(hours=2)
    report = service.retry_deletes(now=later)
    assert report.orphans_removed >= 1
    assert state(catalog_env, product)["objects"] == []
    assert json.loads(report.model_dump_json()).keys() == {
        "retried",
        "deleted",
        "still_failing",
        "orphans_removed",
    }
