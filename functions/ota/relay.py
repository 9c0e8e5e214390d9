"""ota-outbox-relay — publishes `ota.event_outbox` to Kafka: `python -m functions.ota.relay`.

A long-running process like the MQTT bridge (a Deployment in a cluster, a runtime process
locally). Each cycle, in one PostgreSQL transaction, it takes every lane no other relay holds
(advisory locks), reads up to OTA_OUTBOX_BATCH ready rows of those lanes below the xmin horizon
in (txid, id) order (functions/ota/outbox.py), sends them with kafka-python's idempotent
producer (acks=all) to `job.events` keyed by device id, waits for the acknowledgements, marks
what was acknowledged as sent and commits. A crash before the commit republishes the batch
(duplicates, never loss; consumers dedupe by event id / ce_id).

- A device's rows go out in waves, one row per device per wave, so a row that fails stops its
  device's later rows of the batch from overtaking it.
- A row the broker refuses (too large, invalid) is retried after OTA_OUTBOX_BACKOFF (1, 2, 4,
  8 s), then published to `job.dlq` with its error and marked dead, which unblocks its device.
- Kafka being unreachable is not the rows' fault: nothing is charged, the cycle is retried.
- It wakes on NOTIFY ota_outbox (sent at each insert's commit) and polls every OTA_OUTBOX_POLL_S.

Metrics on OBJECTFLOW_METRICS_PORT: outbox_pending_total, outbox_oldest_pending_age_seconds,
outbox_published_total, outbox_errors_total{kind}, outbox_publish_latency_seconds.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from functions.ota import outbox
from functions.ota import settings as ota_settings
from functions.ota.events import cloudevent_type
from functions.runtime import clients, settings
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import DependencyUnavailable, SettingsError

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from psycopg2.extensions import cursor as Cursor

NAME = "ota-outbox-relay"
CHANNEL = "ota_outbox"
log = logging.getLogger("objectflow.ota.relay")

PENDING = Gauge("outbox_pending_total", "Outbox rows not yet sent (nor dead).")
OLDEST = Gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox row.")
PUBLISHED = Counter("outbox_published_total", "Outbox rows acknowledged by Kafka.", ["topic"])
ERRORS = Counter(
    "outbox_errors_total",
    "Relay failures by kind: rejected (a row the broker refused, retried later), dead (a row "
    "moved to job.dlq), unavailable (Kafka or PostgreSQL unreachable; nothing charged).",
    ["kind"],
)
LATENCY = Histogram(
    "outbox_publish_latency_seconds",
    "From the outbox row's transaction to the broker's acknowledgement.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class KafkaUnavailable(Exception):
    """The broker could not be reached or did not answer in time; retry the cycle later."""


def headers(row: outbox.Row, source: str) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka protocol binding, binary mode: attributes as ce_* headers."""
    attributes = {
        "ce_specversion": "1.0",
        "ce_id": row.event_id,
        "ce_type": cloudevent_type(row.event_type),
        "ce_source": source,
        "ce_subject": row.aggregate_id,
        "ce_partitionkey": row.partition_key,  # Knative's ordered delivery key: the device
        "content-type": "application/json",
    }
    occurred = row.payload.get("occurred_at")
    if isinstance(occurred, str):
        attributes["ce_time"] = occurred
    return [(name, value.encode()) for name, value in attributes.items()]


def waves(rows: list[outbox.Row]) -> Iterator[list[outbox.Row]]:
    """Wave k holds the k-th row of each device (rows are in (txid, id) order)."""
    per_device: dict[str, list[outbox.Row]] = defaultdict(list)
    for row in rows:
        per_device[row.partition_key].append(row)
    depth = max((len(r) for r in per_device.values()), default=0)
    for k in range(depth):
        yield [device_rows[k] for device_rows in per_device.values() if len(device_rows) > k]


def is_outage(exc: BaseException) -> bool:
    """A failure of the connection to Kafka, not of the record (retriable kafka-python errors)."""
    return bool(getattr(exc, "retriable", False))


def dlq_record(row: outbox.Row, error: str, keep_bytes: int) -> bytes:
    """What job.dlq gets for a dead row: its identity, error and (a prefix of) its payload."""
    value = row.value()
    body: dict[str, Any] = {
        "event_id": row.event_id,
        "type": row.event_type,
        "job_id": row.aggregate_id,
        "device_id": row.partition_key,
        "outbox_id": row.id,
        "attempts": row.attempts + 1,
        "error": error,
        "payload_bytes": len(value),
        "payload_truncated": len(value) > keep_bytes,
        "payload": value[:keep_bytes].decode(errors="replace"),
        "dead_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Refused:
    """A send that failed before it left (the shape of kafka-python's record future)."""

    error: Exception

    def get(self, timeout: float | None = None) -> None:
        raise self.error


@dataclass
class Outcome:
    sent: list[outbox.Row]
    rejected: list[tuple[outbox.Row, str]]


class Relay:
    def __init__(
        self,
        cfg: ota_settings.OutboxSettings,
        producer: KafkaProducer,
        stop: threading.Event | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        self.cfg, self.producer, self.timeout_s = cfg, producer, timeout_s
        self.stop = stop or threading.Event()
        self._status_at = 0.0

    # --- one cycle ------------------------------------------------------------------------

    def cycle(self) -> int:
        """Publish what is ready now, in one transaction; returns the rows sent."""
        return clients.postgres.transaction(self._cycle)

    def _cycle(self, cur: Cursor) -> int:
        # Marks lost in a crash only republish their rows (at least once, never loss), so the
        # commit need not wait for its WAL flush (bench/README.md, "OTA outbox relay").
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(
            "SELECT lane FROM generate_series(0, %s - 1) AS lane "
            "WHERE pg_try_advisory_xact_lock(%s, lane)",
            (self.cfg.outbox_lanes, outbox.ADVISORY_NAMESPACE),
        )
        lanes = [lane for (lane,) in cur.fetchall()]
        if not lanes:
            return 0
        rows = outbox.ready_rows(cur, lanes, self.cfg.outbox_lanes, self.cfg.outbox_batch)
        if not rows:
            return 0
        result = self.publish(rows)
        outbox.mark_sent(cur, [row.id for row in result.sent])
        for row, error in result.rejected:
            self._settle_failure(cur, row, error)
        return len(result.sent)

    def publish(self, rows: list[outbox.Row]) -> Outcome:
        """Send `rows` wave by wave; a device whose row was refused sends nothing more."""
        outcome = Outcome([], [])
        failed: set[str] = set()
        for wave in waves(rows):
            wave = [row for row in wave if row.partition_key not in failed]
            futures = [(row, self._send(row)) for row in wave]
            self.producer.flush(timeout=self.timeout_s)
            acked_at = time.time()
            for row, future in futures:
                try:
                    future.get(timeout=self.timeout_s)
                except Exception as exc:
                    if is_outage(exc):
                        raise KafkaUnavailable(repr(exc)) from exc
                    failed.add(row.partition_key)
                    outcome.rejected.append((row, f"{type(exc).__name__}: {exc}"))
                    continue
                outcome.sent.append(row)
                LATENCY.observe(max(0.0, acked_at - row.created_at.timestamp()))
        PUBLISHED.labels(self.cfg.job_topic).inc(len(outcome.sent))
        return outcome

    def _send(self, row: outbox.Row) -> Any:
        try:
            return self.producer.send(
                self.cfg.job_topic,
                key=row.partition_key.encode(),
                value=row.value(),
                headers=headers(row, self.cfg.event_source),
            )
        except Exception as exc:  # raised at once, e.g. larger than max_request_size
            if is_outage(exc):
                raise KafkaUnavailable(repr(exc)) from exc
            return Refused(exc)

    def _settle_failure(self, cur: Cursor, row: outbox.Row, error: str) -> None:
        backoff = self.cfg.outbox_backoff
        if row.attempts < len(backoff):
            ERRORS.labels("rejected").inc()
            retry_in = timedelta(seconds=backoff[row.attempts])
            outbox.mark_failed(cur, row, error, retry_in)
            log.warning("outbox row refused, will retry",
                        extra={"event_id": row.event_id, "attempt": row.attempts + 1,
                               "retry_in_s": retry_in.total_seconds(), "error": error})  # fmt: skip
            return
        value = dlq_record(row, error, self.cfg.outbox_dlq_payload_bytes)
        future = self.producer.send(
            self.cfg.dlq_topic,
            key=row.partition_key.encode(),
            value=value,
            headers=[("event_id", row.event_id.encode()), ("error", error[:500].encode())],
        )
        try:
            future.get(timeout=self.timeout_s)
        except Exception as exc:  # not on job.dlq yet: keep it failing, try again later
            outbox.mark_failed(cur, row, f"{error}; job.dlq: {exc!r}", timedelta(seconds=1))
            ERRORS.labels("rejected").inc()
            return
        outbox.mark_dead(cur, row, error)
        ERRORS.labels("dead").inc()
        log.error("outbox row moved to job.dlq", extra={"event_id": row.event_id, "error": error})

    # --- the loop -------------------------------------------------------------------------

    def status(self) -> outbox.Status:
        found = clients.postgres.transaction(outbox.status)
        PENDING.set(found.pending)
        OLDEST.set(found.oldest_age_s)
        return found

    def run(self) -> None:
        listener = Listener(self.stop)
        pause = 0.5
        try:
            while not self.stop.is_set():
                try:
                    sent = self.cycle()
                    pause = 0.5
                except (KafkaUnavailable, DependencyUnavailable) as exc:
                    ERRORS.labels("unavailable").inc()
                    log.warning("relay cycle failed, retrying", extra={"error": str(exc)[:300],
                                "retry_in_s": pause})  # fmt: skip
                    self.stop.wait(pause)
                    pause = min(pause * 2, 10)
                    continue
                if sent:
                    self._refresh_status()
                    continue  # there may be more
                wait = self.cfg.outbox_poll_s
                with_status = self._refresh_status(force=True)
                if with_status is not None:
                    if with_status.behind_horizon:
                        wait = 0.01  # a transaction is still open below a committed row
                    elif with_status.next_retry_s is not None:
                        wait = min(wait, max(0.01, with_status.next_retry_s))
                listener.wait(wait)
        finally:
            listener.close()

    def _refresh_status(self, force: bool = False) -> outbox.Status | None:
        now = time.monotonic()
        if not force and now - self._status_at < 1.0:
            return None
        self._status_at = now
        try:
            return self.status()
        except DependencyUnavailable:
            return None


class Listener:
    """LISTEN ota_outbox on its own connection; `wait` returns on a NOTIFY or the timeout."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.conn: Any = None

    def _connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(settings.postgres().dsn, connect_timeout=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, timeout: float) -> None:
        import psycopg2

        try:
            if self.conn is None:
                self.conn = self._connect()
            if not self.conn.notifies:
                select.select([self.conn], [], [], timeout)
            self.conn.poll()
            self.conn.notifies.clear()
        except (OSError, psycopg2.Error) as exc:  # reconnect next time; poll meanwhile
            log.warning("LISTEN connection lost", extra={"error": repr(exc)})
            self.close()
            self.stop.wait(timeout)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing the LISTEN connection failed")
            self.conn = None


def producer(**overrides: Any) -> KafkaProducer:
    return clients.kafka.producer(NAME, **overrides)


def main() -> int:
    objectflow_logging.configure(NAME)
    stop = threading.Event()
    handler: Callable[..., None] = lambda *_: stop.set()  # noqa: E731
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        cfg = ota_settings.outbox()
        port = os.environ.get("OBJECTFLOW_METRICS_PORT")
        if port:
            from prometheus_client import start_http_server

            start_http_server(int(port))
        kafka = None
        while kafka is None and not stop.is_set():
            try:
                kafka = producer()
            except Exception as exc:  # NoBrokersAvailable at start: wait for Kafka
                log.warning("Kafka not reachable yet", extra={"error": repr(exc)})
                stop.wait(2)
        if kafka is None:
            return 0
        log.info("relaying the outbox", extra={"topic": cfg.job_topic, "lanes": cfg.outbox_lanes})
        Relay(cfg, kafka, stop).run()
        kafka.close(timeout=5)
    except SettingsError as exc:
        log.error("bad settings: %s", exc.detail, extra={"setting": exc.setting})
        return 2
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
