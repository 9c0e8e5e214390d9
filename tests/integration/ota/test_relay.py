"""The outbox relay against the real PostgreSQL and Kafka: no gaps behind a late commit,
per-device order with two relays at once, and a poison row to job.dlq after its backoffs
without blocking other devices. (Outages: tests/e2e/ota/test_outbox_faults.py.)"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from functions.ota import outbox, relay
from functions.ota import settings as ota_settings
from functions.runtime import clients, settings
from tests.ota_support import JobEvents, sql, unique
from tests.support import wait_for


@pytest.fixture
def relay_env(ota_env: dict[str, str]) -> dict[str, str]:
    os.environ["OTA_OUTBOX_BACKOFF"] = "0.2,0.2,0.2,0.2"
    os.environ["OTA_OUTBOX_POLL_S"] = "0.2"
    settings.reset()
    clients.reset()
    return ota_env


@contextlib.contextmanager
def relays(count: int) -> Iterator[list[relay.Relay]]:
    """`count` relays, each with its own producer, running in threads until the block ends."""
    stop = threading.Event()
    running = [relay.Relay(ota_settings.outbox(), relay.producer(), stop) for _ in range(count)]
    threads = [threading.Thread(target=r.run, daemon=True) for r in running]
    for t in threads:
        t.start()
    try:
        yield running
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        for r in running:
            r.producer.close(timeout=5)


def dsn(env: dict[str, str]) -> str:
    return (
        f"postgresql://{env['DB_USER']}:{env['DB_PASSWORD']}@{env['DB_HOST']}:"
        f"{env['DB_PORT']}/{env['DB_NAME']}"
    )


def add(cur: Any, device: str, seq: int, payload: dict[str, Any] | None = None) -> str:
    event_id = uuid.uuid4()
    outbox.write(
        cur,
        event_id=event_id,
        aggregate_id=f"job-{device}",
        partition_key=device,
        event_type="job.updated",
        payload=payload or {"event_id": str(event_id), "seq": seq},
    )
    return str(event_id)


def committed(env: dict[str, str], device: str, seq: int, **payload: Any) -> str:
    with psycopg2.connect(dsn(env)) as conn, conn.cursor() as cur:
        event_id = add(cur, device, seq, payload or None)
    conn.close()
    return event_id


def test_a_transaction_that_commits_late_is_not_skipped(relay_env: dict[str, str]) -> None:
    early, late = unique("dev"), unique("dev")
    events = JobEvents(relay_env)
    slow = psycopg2.connect(dsn(relay_env))
    try:
        with relays(1):
            slow_cur = slow.cursor()
            slow_id = add(slow_cur, early, 1)  # its id and txid are taken now ...
            fast_id = committed(relay_env, late, 1)  # ... a later transaction commits first
            slow.commit()  # ... and then the early one
            found = events.wait([early, late], 2)
        order = [r.value["event_id"] for r in found]
        assert set(order) == {slow_id, fast_id}
        (sent,) = sql(
            relay_env,
            "SELECT count(*) FROM ota.event_outbox WHERE event_id::text = ANY(%s)"
            " AND sent_at IS NOT NULL",
            ([slow_id, fast_id],),
        )
        assert sent == (2,)
    finally:
        slow.close()
        events.close()


def test_two_relays_keep_each_devices_order(relay_env: dict[str, str]) -> None:
    devices = [unique("dev") for _ in range(8)]
    events = JobEvents(relay_env)
    try:
        with relays(2):
            for seq in range(25):  # rows arrive while both relays work
                with psycopg2.connect(dsn(relay_env)) as conn, conn.cursor() as cur:
                    for device in devices:
                        add(cur, device, seq)
                conn.close()
            found = events.wait(devices, 25 * len(devices), timeout=60)
    finally:
        events.close()
    for device in devices:
        seqs = [r.value["seq"] for r in found if r.key == device]
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == list(range(25)), device
        assert all(r.headers["ce_type"] == "objectflow.ota.job.updated.v1" for r in found)


def test_a_poison_row_goes_to_the_dlq_after_its_backoffs_and_blocks_only_its_device(
    relay_env: dict[str, str],
) -> None:
    poisoned, other = unique("dev"), unique("dev")
    events, dlq = JobEvents(relay_env), JobEvents(relay_env, "job.dlq")
    try:
        poison_id = committed(relay_env, poisoned, 1, blob="x" * 1_200_000)  # > max message
        after_id = committed(relay_env, poisoned, 2)
        other_id = committed(relay_env, other, 1)
        with relays(1):
            dead = dlq.wait([poisoned], 1, timeout=60)
            found = events.wait([poisoned, other], 2, timeout=30)
    finally:
        events.close()
        dlq.close()
    (letter,) = [r.value for r in dead]
    assert letter["event_id"] == poison_id and letter["payload_truncated"] is True
    assert "MessageSizeTooLarge" in letter["error"] or "RecordTooLarge" in letter["error"]
    assert [r.value["event_id"] for r in found if r.key == poisoned] == [after_id]
    assert other_id in {r.value["event_id"] for r in found}
    ((attempts, dead_at, error),) = sql(
        relay_env,
        "SELECT attempts, dead_at, last_error FROM ota.event_outbox WHERE event_id = %s",
        (poison_id,),
    )
    assert attempts == 5 and dead_at is not None and error
    # the other device was not held up by the poisoned one's backoffs
    (gap,) = sql(
        relay_env,
        """SELECT (SELECT sent_at FROM ota.event_outbox WHERE event_id = %s)
                                    < (SELECT dead_at FROM ota.event_outbox WHERE event_id = %s)""",
        (other_id, poison_id),
    )
    assert gap == (True,)


def test_the_relay_exports_its_metrics(relay_env: dict[str, str]) -> None:
    """The runtime's relay (values.yaml `ota-outbox-relay`, /metrics on its local port) counts
    what it publishes: with no relay of the test's own running, it publishes this row."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from devstack import wiring

    port = wiring.default().sources.outbox_relays["ota-outbox-relay"].local_port
    url = f"http://127.0.0.1:{port}/metrics"

    def samples() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
            for sample in family.samples:
                found[sample.name] = found.get(sample.name, 0) + sample.value
        return found

    device = unique("dev")
    before = samples().get("outbox_published_total", 0)
    events = JobEvents(relay_env)
    try:
        committed(relay_env, device, 1)
        events.wait([device], 1)
        wait_for(lambda: samples().get("outbox_published_total", 0) > before)
    finally:
        events.close()
    after = samples()
    assert "outbox_pending_total" in after and "outbox_oldest_pending_age_seconds" in after
    assert after.get("outbox_publish_latency_seconds_count", 0) >= 1
