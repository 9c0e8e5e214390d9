"""Several workers at once: detections-store as 4 concurrent functions-framework processes and
the mongo-outbox source run twice, against the real FerretDB and a versioned MinIO bucket.

The test starts the workers itself, on a collection of its own, so the shared runtime's
detections-store (one process unless values.yaml gives it a `scale:`) takes no part. Each
source posts straight to one worker (a Knative source may sink to a Service directly); the
other two workers get every event too, from this test, posted at
the same moment as a redelivering broker would. So each document reaches all four workers, and
must still be written to MinIO exactly once (one object version) and marked ready once.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from functions.runtime import cehttp
from functions.sources.mongo_outbox import to_cloudevent
from tests.detections_support import Outbox, Process, Worker, metric, source
from tests.support import scaled

DOCUMENTS, BURSTS = scaled(100, 400), 4  # documents: `make test` / `make chaos`
TYPE = "objectflow.detections.prediction.predictable.v1"


@pytest.fixture
def box(service_env: dict[str, str]) -> Iterator[Outbox]:
    found = Outbox(service_env)
    yield found
    found.close()


@pytest.mark.chaos
def test_four_workers_and_two_sources_write_each_document_exactly_once(
    service_env: dict[str, str], box: Outbox, tmp_path: Path
) -> None:
    workers = [Worker(service_env, tmp_path / f"worker-{i}.log").start() for i in range(4)]
    sources: list[Process] = []
    try:
        sources = [
            source(service_env, box.collection.name, workers[i].url, tmp_path / f"source-{i}.log",
                   DETECTIONS_POLL_INTERVAL="0.1")
            for i in range(2)
        ]  # fmt: skip
        session = requests.Session()

        def race(document: dict[str, object]) -> None:
            event = to_cloudevent(document, box.collection.name, TYPE, "mongodb://test/db")
            headers, body = cehttp.encode(event)
            for worker in workers[2:]:
                session.post(worker.url, headers=headers, data=body, timeout=30).raise_for_status()

        documents = [box.document(n) for n in range(DOCUMENTS)]
        per_burst = DOCUMENTS // BURSTS
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, DOCUMENTS, per_burst):
                burst = documents[start : start + per_burst]
                box.insert(burst)
                list(pool.map(race, burst))
        box.wait_ready(DOCUMENTS, timeout=120)
        box.assert_written(documents)
        # "ready once": exactly DOCUMENTS status updates happened across the four workers.
        outcomes = {
            outcome: sum(
                metric(f"{w.url}metrics", f'objectflow_detections_store_total{{outcome="{outcome}"')
                for w in workers
            )
            for outcome in ("uploaded", "identical", "overwritten", "busy", "done")
        }
        assert outcomes["uploaded"] == DOCUMENTS, outcomes
        assert outcomes["identical"] == outcomes["overwritten"] == 0, outcomes
        assert outcomes["busy"] + outcomes["done"] > 0, outcomes  # they did compete
    finally:
        for process in [*sources, *workers]:
            process.stop()
