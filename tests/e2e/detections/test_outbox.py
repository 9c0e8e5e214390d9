"""The detections outbox through the running runtime, with the real FerretDB and MinIO: the
runtime's mongo-outbox source watches runner_db.runner_predictions, detections-store writes.

Tests insert only documents of their own (their own event ids, a versioned bucket of their
own, so object versions count the PUTs) and remove them afterwards. The e2e overlay shortens
the lease to 20 s so re-posts after an outage come quickly (yet a burst of 500 drains
within it, so nothing is posted twice while it waits in the broker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from bson import Binary

from devstack import wiring
from devstack.process import our_pid
from devstack.runtime import supervisor
from tests.detections_support import Outbox, Worker, metric, source
from tests.support import E2E_OVERLAY, start_stack, stop_service, wait_for

HERE = Path(__file__).resolve().parent
LOGS = supervisor.LOGS


@pytest.fixture
def box(stack_env: dict[str, str], values: wiring.Values) -> Iterator[Outbox]:
    assert values.sources.mongo_outbox is not None
    found = Outbox(stack_env, collection=values.sources.mongo_outbox.collection)
    yield found
    found.close()


def store_metrics(values: wiring.Values) -> str:
    return f"http://127.0.0.1:{values.ports()['detections-store']}/metrics"


def insert_bursts(box: Outbox, total: int, bursts: int, first: int = 0) -> list[dict[str, object]]:
    documents = [box.document(n) for n in range(first, first + total)]
    size = total // bursts
    for start in range(0, total, size):
        box.insert(documents[start : start + size])
    return documents


def test_500_documents_in_bursts_end_ready_written_once(box: Outbox, broker: str) -> None:
    documents = insert_bursts(box, 500, 5)
    box.wait_ready(500, timeout=180)
    box.assert_written(documents)


def test_bad_documents_stay_predictable_with_a_reason_and_nothing_in_minio(
    box: Outbox, broker: str
) -> None:
    bad = {
        "event_id": box.document(0),
        "slash": box.document(1, event_id=f"x/{box.tag}"),
        "dots": box.document(2, event_id=f"..{box.tag}"),
        "bucket": box.document(3, bucket=f"no-such-bucket-{box.tag}"),
        "binary": box.document(4, prediction={"mask": Binary(b"\x00\xff", 0x80)}),
        "oversize": box.document(5, prediction={"pixels": "x" * (1024 * 1024 + 1)}),
    }
    del bad["event_id"]["event_id"]
    box.insert(list(bad.values()))
    wait_for(lambda: len(box.mine({"outbox_error": {"$exists": True}})) == len(bad), timeout=60,
             what="every bad document rejected")  # fmt: skip
    for after in box.mine():
        assert after["status"] == "predictable" and "output_s3" not in after
    reasons = {d["_id"]: d["outbox_error"] for d in box.mine()}
    fields = {"event_id": "event_id", "slash": "event_id", "dots": "event_id",
              "bucket": "bucket", "binary": "prediction", "oversize": "prediction"}  # fmt: skip
    for name, field in fields.items():
        assert reasons[bad[name]["_id"]].startswith(f"{field}: "), (name, reasons)
    assert box.versions() == {}


def test_minio_outage_documents_stay_predictable_then_all_ready(
    box: Outbox, values: wiring.Values, broker: str
) -> None:
    unavailable = (
        'objectflow_errors_total{function="detections-store",kind="dependency-unavailable"'
    )
    before = metric(store_metrics(values), unavailable)
    stop_service("minio")
    try:
        documents = insert_bursts(box, 20, 2)
        wait_for(lambda: metric(store_metrics(values), unavailable) >= before + 20, timeout=90,
                 what="detections-store answering 503 while MinIO is down")  # fmt: skip
        assert box.ready() == 0
    finally:
        start_stack()
    box.wait_ready(20, timeout=120)
    box.assert_written(documents)


def test_ferretdb_outage_the_source_reconnects_and_nothing_is_lost(
    box: Outbox, broker: str
) -> None:
    log = LOGS / "mongo-outbox.log"
    reconnects = log.read_text(errors="replace").count("MongoDB unavailable")
    documents = insert_bursts(box, 50, 2)
    stop_service("ferretdb")
    try:
        wait_for(lambda: log.read_text(errors="replace").count("MongoDB unavailable") > reconnects,
                 timeout=60, what="the source noticing the outage")  # fmt: skip
    finally:
        start_stack()
    documents += insert_bursts(box, 50, 2, first=50)
    box.wait_ready(100, timeout=180)
    box.assert_written(documents)


def test_postgres_outage_mid_burst_is_a_mongodb_outage_and_loses_nothing(
    box: Outbox, values: wiring.Values, broker: str
) -> None:
    """FerretDB keeps its data in PostgreSQL: stopping PostgreSQL mid-burst leaves FerretDB up
    but failing every command, between any two of a worker's writes (claim, upload, ready)."""
    log = LOGS / "mongo-outbox.log"
    unavailable = (
        'objectflow_errors_total{function="detections-store",kind="dependency-unavailable"'
    )
    reconnects = log.read_text(errors="replace").count("MongoDB unavailable")
    before = metric(store_metrics(values), unavailable)
    documents = insert_bursts(box, 300, 3)
    wait_for(lambda: box.ready() >= 10, timeout=60, what="the burst under way")
    assert box.ready() < 300, "the burst ended before the outage; nothing would be tested"
    stop_service("postgres")
    try:
        wait_for(
            lambda: (
                log.read_text(errors="replace").count("MongoDB unavailable") > reconnects
                or metric(store_metrics(values), unavailable) > before
            ),
            timeout=60,
            what="the source or the store noticing that MongoDB is unavailable",
        )
    finally:
        start_stack()
    documents += insert_bursts(box, 50, 1, first=300)
    box.wait_ready(350, timeout=240)
    box.assert_written(documents)


def runtime_child(module: str) -> int:
    """Pid of the runtime's process running `python -m <module>` (the runtime started it: its
    zygote forked it, so it descends from the supervisor)."""
    runtime = our_pid(supervisor.spec([E2E_OVERLAY]))
    assert runtime is not None, "the runtime is not running"
    for proc in psutil.Process(runtime).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.cmdline()[-2:] == ["-m", module]:
                return proc.pid
    raise AssertionError(f"no runtime process runs {module}")


def test_source_sigkilled_mid_burst_loses_nothing(box: Outbox, broker: str) -> None:
    pid = runtime_child("functions.sources.mongo_outbox")
    documents = insert_bursts(box, 200, 4)
    wait_for(lambda: box.ready() >= 20, timeout=60, what="the burst under way")
    os.kill(pid, signal.SIGKILL)
    assert box.ready() < 200, "the burst ended before the kill; nothing was tested"
    wait_for(lambda: runtime_child("functions.sources.mongo_outbox") != pid, timeout=30,
             what="the supervisor restarting the source")  # fmt: skip
    box.wait_ready(200, timeout=180)
    box.assert_written(documents)


def test_worker_killed_between_upload_and_status_is_picked_up_after_the_lease(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    box = Outbox(service_env)  # its own collection: only its own source and worker see it
    marker = tmp_path / "crashed"
    lease = 3.0
    timing = {"DETECTIONS_LEASE_SECONDS": str(lease), "DETECTIONS_POLL_INTERVAL": "0.1"}
    crashing = Worker(service_env, tmp_path / "crashing.log", HERE / "crashing_store.py",
                      CRASH_MARKER=str(marker), **timing).start()  # fmt: skip
    worker = crashing
    outbox_source = source(service_env, box.collection.name, crashing.url, tmp_path / "source.log",
                           **timing)  # fmt: skip
    try:
        (document,) = documents = [box.document(1)]
        box.insert(documents)
        wait_for(marker.exists, timeout=30, what="the worker crashing after its upload")
        crashed_at = time.monotonic()
        assert box.versions() == {f"detection/{document['event_id']}.json": 1}
        assert box.mine()[0]["status"] == "predictable"
        if crashing.proc is not None and crashing.proc.poll() is not None:  # no gunicorn respawn
            worker = Worker(service_env, tmp_path / "worker.log", port=crashing.port, **timing)
            worker.start()
        box.wait_ready(1, timeout=lease * 6)
        assert time.monotonic() - crashed_at >= lease * 0.5  # not before the claim expired
        box.assert_written(documents)  # the object was there, identical: written once
    finally:
        outbox_source.stop()
        for process in {id(crashing): crashing, id(worker): worker}.values():
            process.stop()
        box.close()
