"""The mongo-outbox source as a real process between the real FerretDB and a real HTTP sink:
one event per document, no flooding, re-posts after the lease, sink outages, restarts."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.detections import outbox
from tests.detections_support import Outbox, Process, metric, source
from tests.support import RecordingSink, wait_for

LEASE = 3.0


@pytest.fixture
def box(service_env: dict[str, str]) -> Iterator[Outbox]:
    found = Outbox(service_env)
    yield found
    found.close()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as recording:
        yield recording


def start(env: dict[str, str], box: Outbox, sink: RecordingSink, tmp_path: Path) -> Process:
    return source(
        env, box.collection.name, sink.url, tmp_path / "source.log",
        DETECTIONS_POLL_INTERVAL="0.1", DETECTIONS_LEASE_SECONDS=str(LEASE),
    )  # fmt: skip


def test_one_event_per_predictable_document_and_again_only_after_the_lease(
    service_env: dict[str, str], box: Outbox, sink: RecordingSink, tmp_path: Path
) -> None:
    documents = [box.document(n) for n in range(20)]
    rejected = box.document(99, outbox_error="event_id: bad")
    done = box.document(98, status="ready")
    box.insert([*documents, rejected, done])
    process = start(service_env, box, sink, tmp_path)
    try:
        wait_for(lambda: len(sink.accepted(unique=True)) == 20, timeout=20, what="20 events")
        events = {e["id"]: e for e in sink.accepted()}
        assert set(events) == {d["event_id"] for d in documents}
        for document in documents:
            event = events[document["event_id"]]
            assert event["subject"] == document["event_id"]
            assert event["type"] == "objectflow.detections.prediction.predictable.v1"
            assert event["source"].endswith(f"/{box.collection.name}")
            assert event.get_data() == {
                "collection": box.collection.name,
                "document_id": outbox.reference(document["_id"]),
            }
        assert len(sink.accepted()) == 20  # nothing posted twice within the lease
        # Written meanwhile: not posted again; still predictable after the lease: posted again.
        box.collection.update_many(
            {"_id": {"$in": [d["_id"] for d in documents[:10]]}}, {"$set": {"status": "ready"}}
        )
        wait_for(lambda: len(sink.accepted()) == 30, timeout=LEASE * 4, what="10 re-posts")
        reposted = {e["id"] for e in sink.accepted()[20:]}
        assert reposted == {d["event_id"] for d in documents[10:]}
        metrics = f"http://127.0.0.1:{process.env['OBJECTFLOW_METRICS_PORT']}/metrics"
        assert metric(metrics, 'objectflow_outbox_documents_total{outcome="found"') == 20
        assert metric(metrics, 'objectflow_outbox_documents_total{outcome="posted"') == 20
        assert metric(metrics, 'objectflow_outbox_documents_total{outcome="reposted"') == 10
        assert metric(metrics, "objectflow_outbox_waiting") == 10
        assert metric(metrics, "objectflow_outbox_lag_seconds") > 0
    finally:
        process.stop()


def test_nothing_is_lost_while_the_sink_is_down_or_the_source_is_killed(
    service_env: dict[str, str], box: Outbox, sink: RecordingSink, tmp_path: Path
) -> None:
    sink.status = 503
    process = start(service_env, box, sink, tmp_path)
    try:
        box.insert([box.document(n) for n in range(10)])
        wait_for(lambda: sink.refused >= 10, timeout=20, what="refused attempts")
        assert process.stop(signal.SIGKILL) == -signal.SIGKILL
        sink.status = 202
        process = start(service_env, box, sink, tmp_path)
        wait_for(lambda: len(sink.accepted(unique=True)) == 10, timeout=20, what="all 10 events")
    finally:
        process.stop()
