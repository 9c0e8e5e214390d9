"""detections-reconcile in-process against the real FerretDB and MinIO: it counts what waits
(stuck, rejected) and re-opens a ready document whose object is gone, exactly once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient

from functions.runtime import clients, settings
from tests.detections_support import Outbox
from tests.integration.detections.test_store import deliver

ROOT = Path(__file__).resolve().parents[3]
RECONCILE = ROOT / "functions" / "detections" / "reconcile.py"
STORE = ROOT / "functions" / "detections" / "store.py"


@pytest.fixture
def box(service_env: dict[str, str]) -> Iterator[Outbox]:
    found = Outbox(service_env)
    yield found
    found.close()


@pytest.fixture
def apps(box: Outbox) -> Iterator[dict[str, FlaskClient]]:
    settings.reset()
    clients.reset()
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    os.environ["DETECTIONS_COLLECTION"] = box.collection.name
    os.environ["DETECTIONS_STUCK_AFTER_SECONDS"] = "600"

    def app(source: Path, target: str) -> FlaskClient:
        return functions_framework.create_app(target, str(source), "http").test_client()

    yield {
        "store": app(STORE, "detections_store"),
        "reconcile": app(RECONCILE, "detections_reconcile"),
    }
    clients.reset()
    settings.reset()


def tick(reconcile: FlaskClient) -> dict[str, Any]:
    ping = CloudEvent(
        {
            "type": "dev.knative.sources.ping",
            "source": "/apis/v1/namespaces/objectflow/pingsources/detections-reconcile",
        },
        {},
    )
    headers, body = to_binary(ping)
    answer = reconcile.post("/", headers=headers, data=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["ce-type"] == "objectflow.detections.reconciled.v1"
    return dict(answer.get_json())


def test_reconcile_counts_waiting_documents_and_reopens_a_missing_object(
    apps: dict[str, FlaskClient], box: Outbox
) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    box.insert(
        [
            box.document(1, created_at=an_hour_ago),  # stuck
            box.document(2, created_at=an_hour_ago, outbox_error="bucket: no such bucket"),
            box.document(3, created_at=datetime.now(UTC)),  # waiting, not stuck yet
        ]
    )
    kept, lost = box.document(4), box.document(5)
    box.insert([kept, lost])
    for document in (kept, lost):
        assert deliver(apps["store"], box, document).status_code == 204
    box.s3.delete_object(Bucket=box.bucket, Key=f"detection/{lost['event_id']}.json")

    report = tick(apps["reconcile"])
    assert report == {
        "predictable": 3, "stuck": 2, "rejected": 1, "checked": 2, "reopened": 1, "errors": 0,
    }  # fmt: skip
    status = {d["event_id"]: d["status"] for d in box.mine()}
    assert status[kept["event_id"]] == "ready"
    assert status[lost["event_id"]] == "predictable"  # the source posts it again

    # Re-opened once: the next run finds it waiting, not missing again.
    again = tick(apps["reconcile"])
    assert (again["predictable"], again["checked"], again["reopened"]) == (4, 1, 0)
    # Written again, it is ready with its object back.
    assert deliver(apps["store"], box, lost).status_code == 204
    body, _head = box.object(lost["event_id"])
    assert body and {d["event_id"]: d["status"] for d in box.mine()}[lost["event_id"]] == "ready"
