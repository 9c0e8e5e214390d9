"""detections-store in-process against the real FerretDB and MinIO: write, replay, bad input,
existing objects, claims held by another worker and taken over after the lease."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import functions_framework
import pytest
from bson import Binary
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient

from functions.detections import outbox
from functions.runtime import clients, settings
from functions.sources.mongo_outbox import to_cloudevent
from tests.detections_support import STORE, Outbox


@pytest.fixture
def box(service_env: dict[str, str]) -> Iterator[Outbox]:
    found = Outbox(service_env)
    yield found
    found.close()


@pytest.fixture
def store(service_env: dict[str, str]) -> Iterator[FlaskClient]:
    settings.reset()
    clients.reset()
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    os.environ["DETECTIONS_MAX_PREDICTION_BYTES"] = "2000"
    yield functions_framework.create_app("detections_store", str(STORE), "http").test_client()
    clients.reset()
    settings.reset()


def deliver(store: FlaskClient, box: Outbox, document: dict[str, Any]) -> Any:
    event = to_cloudevent(
        document,
        box.collection.name,
        "objectflow.detections.prediction.predictable.v1",
        "mongodb://test/db",
    )
    headers, body = to_binary(event)
    return store.post("/", headers=headers, data=body)


def test_a_document_is_written_once_and_marked_ready(store: FlaskClient, box: Outbox) -> None:
    document = box.document(1)
    box.insert([document])
    assert deliver(store, box, document).status_code == 204
    box.assert_written([document])
    (after,) = box.mine()
    # A replay after ready (the source's re-post, a redelivery) changes nothing.
    assert deliver(store, box, document).status_code == 204
    assert box.mine() == [after]
    assert box.versions() == {f"detection/{document['event_id']}.json": 1}
    assert not list(box.db[f"{box.collection.name}_claims"].find())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"event_id": "a/b"}, "event_id"),
        ({"event_id": ".."}, "event_id"),
        ({"event_id": "x..y"}, "event_id"),
        ({"bucket": "no-such-bucket-for-detections-tests"}, "bucket"),
        ({"bucket": "Not_A_Bucket"}, "bucket"),
        ({"prediction": Binary(b"\x00\x01", 5)}, "prediction"),
        ({"prediction": {"raw": Binary(b"\x00\x01")}}, "prediction"),
        ({"prediction": "a string"}, "prediction"),
        ({"prediction": {"big": "x" * 3000}}, "prediction"),
    ],
)
def test_bad_documents_are_422_stay_predictable_with_the_reason_and_write_nothing(
    store: FlaskClient, box: Outbox, fields: dict[str, Any], field: str
) -> None:
    document = box.document(1, **fields)
    if document["event_id"] is None:
        del document["event_id"]
    box.insert([document])
    response = deliver(store, box, document)
    assert response.status_code == 422, response.text
    assert response.json["field"] == field
    (after,) = box.mine()
    assert after["status"] == "predictable"
    assert after["outbox_error"].startswith(f"{field}: ")
    assert response.json["detail"] == after["outbox_error"]
    assert box.versions() == {}
    kept = {k: v for k, v in after.items() if not k.startswith("outbox_error")}
    assert bson.encode(kept) == bson.encode(document)  # (a Binary of subtype 0 reads as bytes)


def test_an_identical_object_is_not_uploaded_again_and_a_different_one_is_overwritten(
    store: FlaskClient, box: Outbox
) -> None:
    same, different = box.document(1), box.document(2)
    box.insert([same, different])
    body = outbox.canonical_json(same["prediction"])
    box.s3.put_object(Bucket=box.bucket, Key=f"detection/{same['event_id']}.json", Body=body)
    box.s3.put_object(Bucket=box.bucket, Key=f"detection/{different['event_id']}.json", Body=b"{}")
    assert deliver(store, box, same).status_code == 204
    assert deliver(store, box, different).status_code == 204
    versions = box.versions()
    assert versions[f"detection/{same['event_id']}.json"] == 1  # ETag matched: no PUT
    assert versions[f"detection/{different['event_id']}.json"] == 2
    assert box.object(different["event_id"])[0] == outbox.canonical_json(different["prediction"])
    assert box.ready() == 2


def test_a_document_claimed_by_another_worker_is_left_until_the_lease_ends(
    store: FlaskClient, box: Outbox
) -> None:
    document = box.document(1)
    (document_id,) = box.insert([document])
    claims = outbox.Claims.of(box.collection)
    key = outbox.document_key(document_id)
    now = datetime.now(UTC)
    assert claims.take(key, "other-worker", 60, now) is not None
    assert deliver(store, box, document).status_code == 204
    assert box.ready() == 0 and box.versions() == {}
    # The other worker died: once its claim expired, the next delivery takes it over.
    box.db[claims.collection.name].update_one(
        {"doc": key}, {"$set": {"expires_at": now - timedelta(seconds=1)}}
    )
    assert deliver(store, box, document).status_code == 204
    box.assert_written([document])


def test_claims_one_generation_wins(box: Outbox) -> None:
    claims = outbox.Claims.of(box.collection)
    now = datetime.now(UTC)
    first = claims.take("doc", "a", 60, now)
    assert first is not None and first.gen == 1
    assert claims.take("doc", "b", 60, now) is None
    again = claims.take("doc", "a", 60, now)  # a retried insert that went through
    assert again is not None and again.id == first.id
    later = now + timedelta(seconds=61)
    second = claims.take("doc", "b", 60, later)
    assert second is not None and second.gen == 2
    assert not claims.held(first, later) and claims.held(second, later)
    assert claims.take("doc", "c", 60, later) is None
    claims.clear(second)
    assert claims.newest("doc") is None


def test_a_released_claim_is_taken_over_at_once_and_generation_1_stays(box: Outbox) -> None:
    claims = outbox.Claims.of(box.collection)
    now = datetime.now(UTC)
    first = claims.take("doc", "a", 60, now)
    assert first is not None and first.gen == 1
    claims.release(first, now)  # gave up unfinished (e.g. MinIO down): expired, not deleted
    second = claims.take("doc", "b", 60, now + timedelta(seconds=1))
    assert second is not None and second.gen == 2
    claims.release(second, now + timedelta(seconds=1))
    third = claims.take("doc", "c", 60, now + timedelta(seconds=2))
    assert third is not None and third.gen == 3
    # Generation 1 is still there, so a newcomer cannot insert it beside the holder of 3.
    assert claims.take("doc", "d", 60, now + timedelta(seconds=3)) is None
    claims.clear(third)
    assert claims.newest("doc") is None
    assert claims.take("doc", "e", 60, now + timedelta(seconds=4)) is not None
