"""Pure logic of the detections outbox: validation, canonical JSON, references, the source's
events and leases, and the wiring of the source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from bson import Binary, ObjectId

from devstack import wiring
from devstack.runtime.supervisor import components
from functions.detections import outbox
from functions.sources.mongo_outbox import Leases, event_id, to_cloudevent


def document(**fields: Any) -> dict[str, Any]:
    return {"_id": ObjectId(), "event_id": "e-1", "bucket": "detections",
            "prediction": {"b": [1, 2.5], "a": "ü"}, **fields}  # fmt: skip


def test_canonical_json_sorts_keys_is_compact_utf8_and_refuses_nan() -> None:
    assert outbox.canonical_json({"b": 1, "a": {"d": None, "c": "é"}}) == (
        '{"a":{"c":"é","d":null},"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        outbox.canonical_json({"x": float("nan")})


def test_a_good_document_becomes_its_object() -> None:
    found = outbox.prediction(document(), 1000)
    assert found.key == "detection/e-1.json"
    assert found.url == "s3://detections/detection/e-1.json"
    assert found.body == '{"a":"ü","b":[1,2.5]}'.encode()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"event_id": 7}, "event_id"),
        ({"event_id": "a/b"}, "event_id"),
        ({"event_id": "../b"}, "event_id"),
        ({"event_id": ".hidden"}, "event_id"),
        ({"event_id": "a..b"}, "event_id"),
        ({"bucket": None}, "bucket"),
        ({"bucket": "UPPER"}, "bucket"),
        ({"prediction": None}, "prediction"),
        ({"prediction": 3}, "prediction"),
        ({"prediction": {"m": Binary(b"\x00")}}, "prediction"),
        ({"prediction": {"t": datetime.now(UTC)}}, "prediction"),
        ({"prediction": {"x": "y" * 100}}, "prediction"),
    ],
)
def test_bad_documents_are_rejected_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(outbox.Rejected) as rejected:
        outbox.prediction(document(**fields), 50)
    assert rejected.value.field == field
    assert rejected.value.reason.startswith(f"{field}: ")


@pytest.mark.parametrize("document_id", [ObjectId(), "plain", 42, {"a": 1}])
def test_a_reference_reads_back_as_the_same_id(document_id: Any) -> None:
    assert outbox.from_reference(outbox.reference(document_id)) == document_id


def test_age_from_created_at_else_the_object_id() -> None:
    now = datetime.now(UTC)
    assert outbox.age({"created_at": now - timedelta(seconds=30)}, now) == pytest.approx(30)
    old = ObjectId.from_datetime(now - timedelta(minutes=5))
    assert outbox.age({"_id": old}, now) == pytest.approx(300, abs=1)
    assert outbox.age({"_id": "no-time"}, now) is None


def test_the_event_names_the_document_by_its_event_id() -> None:
    doc = document()
    event = to_cloudevent(doc, "runner_predictions", "t.v1", "mongodb://h:27017/runner_db")
    assert event["id"] == event["subject"] == "e-1"
    assert event["source"] == "mongodb://h:27017/runner_db/runner_predictions"
    assert event.get_data() == {
        "collection": "runner_predictions",
        "document_id": {"$oid": str(doc["_id"])},
    }
    nameless = document(event_id=None)
    assert event_id(nameless) == f'_id:{{"$oid": "{nameless["_id"]}"}}'


def test_a_document_is_due_again_only_after_the_lease() -> None:
    leases = Leases(60)
    assert leases.due("a", 100.0)
    leases.accepted("a", 100.0)
    assert not leases.due("a", 159.0)
    assert leases.due("a", 160.0)
    leases.keep_only(["b"])
    assert leases.posted == {}


def test_the_runtime_runs_the_declared_outbox_source(tmp_path: Path) -> None:
    values = wiring.default()
    assert values.sources.mongo_outbox is not None
    (source,) = [c for c in components(values) if c.name == "mongo-outbox"]
    assert source.command[1:] == ["-m", "functions.sources.mongo_outbox"]
    assert source.env["OBJECTFLOW_OUTBOX_COLLECTION"] == "runner_predictions"
    overlay = tmp_path / "v.yaml"
    overlay.write_text(yaml.safe_dump({"sources": {"mongo-outbox": {"collection": "elsewhere"}}}))
    with pytest.raises(wiring.WiringError, match="in no domain's `collections`"):
        wiring.load(overlay)
