"""ota-outbox-relay — publishes `ota.event_outbox` to Kafka: `python -m functions.ota.relay`.

A long-running process like the MQTT bridge (a Deployment in a cluster, a runtime process
locally). Each cycle, in one PostgreSQL transaction, it takes every lane no other relay holds
(advisory locks), reads ready rows of those lanes below the xmin horizon in (txid, id) order
(functions/ota/outbox.py), sends them with kafka-python's idempotent producer (acks=all) to
`job.events` keyed by device id, marks what was acknowledged as sent and commits. While
acknowledgements are outstanding, rows that commit meanwhile (a NOTIFY) are read and sent in
the same cycle, up to OTA_OUTBOX_BATCH rows or READING_S, so a row never waits for a whole
earlier cycle's round trip to Kafka. A crash before the commit republishes the cycle's rows
(duplicates, never loss; consumers dedupe by event id / ce_id).

- A device has one row in flight at a time, its later rows queued behind it, so a row that
  fails is never overtaken by its device's later rows.
- A row the broker refuses (too large, invalid) is retried after OTA_OUTBOX_BACKOFF (1, 2, 4,
  8 s), then published to `job.dlq` with its error and marked dead, which unblocks its device.
- Kafka being unreachable is not the rows' fault: nothing is charged, the cycle is retried.
- It wakes on NOTIFY ota_outbox (sent at each insert's commit) and polls every OTA_OUTBOX_POLL_S.

Metrics on OBJECTFLOW_METRICS_PORT: outbox_pending_total, outbox_oldest_pending_age_seconds,
outbox_published_total, outbox_errors_total{kind}, outbox_publish_latency_seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from functions.ota import outbox
from functions.ota import settings as ota_settings
from functions.ota.events import cloudevent_type
from functions.runtime import clients, settings, tracing
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import DependencyUnavailable, SettingsError

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from psycopg2.extensions import cursor as Cursor

NAME = "ota-outbox-relay"
CHANNEL = "ota_outbox"
# How long a cycle goes on taking newly committed rows before it marks and commits: its marks
# (and so a crash's republished duplicates) stay within about this much work.
READING_S = 0.05
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


def headers(
    row: outbox.Row, source: str, traceparent: str | None = None
) -> list[tuple[str, bytes]]:
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
    if traceparent:
        attributes["ce_traceparent"] = traceparent
    return [(name, value.encode()) for name, value in attributes.items()]


@dataclass
class Queues:
    """A cycle's rows by device: one row of a device in flight at a time, the rest behind it in
    (txid, id) order; a refused row drops its device's later rows from the cycle."""

    behind: dict[str, deque[outbox.Row]] = field(default_factory=dict)
    flying: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    seen: list[int] = field(default_factory=list)  # ids read this cycle

    def add(self, rows: list[outbox.Row]) -> list[outbox.Row]:
        """Take newly read rows; returns those to send now."""
        now = []
        for row in rows:
            self.seen.append(row.id)
            device = row.partition_key
            if device in self.flying:
                self.behind.setdefault(device, deque()).append(row)
            else:
                self.flying.add(device)
                now.append(row)
        return now

    def acked(self, row: outbox.Row) -> outbox.Row | None:
        """`row` is on Kafka; returns its device's next row to send, if one waits."""
        device = row.partition_key
        waiting = self.behind.get(device)
        if not waiting:
            self.flying.discard(device)
            return None
        following = waiting.popleft()
        if not waiting:
            del self.behind[device]
        return following

    def refused(self, row: outbox.Row) -> None:
        device = row.partition_key
        self.flying.discard(device)
        self.behind.pop(device, None)
        self.failed.add(device)

    @property
    def idle(self) -> bool:
        return not self.flying


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


class Acks:
    """Acknowledgements of one cycle, handed over by kafka-python's sender thread. Each also
    writes a byte to the relay's wake pipe, so one select() waits for an acknowledgement and a
    NOTIFY at once."""

    def __init__(self, wake: int) -> None:
        self.wake = wake
        self.done: queue.SimpleQueue[tuple[outbox.Row, Exception | None]] = queue.SimpleQueue()

    def watch(self, row: outbox.Row, future: Any) -> None:
        future.add_callback(lambda _metadata: self.put(row, None))
        future.add_errback(lambda error: self.put(row, error))

    def put(self, row: outbox.Row, error: Exception | None) -> None:
        self.done.put((row, error))
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the reader
            os.write(self.wake, b".")

    def take(self) -> list[tuple[outbox.Row, Exception | None]]:
        taken = []
        while not self.done.empty():
            taken.append(self.done.get_nowait())
        return taken


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
        self.listener = Listener(self.stop)
        self._woken, self._wake = os.pipe()
        for fd in (self._woken, self._wake):
            os.set_blocking(fd, False)
        self._status_at = 0.0

    # --- one cycle ------------------------------------------------------------------------

    def cycle(self) -> int:
        """Publish what is ready now, in one transaction; returns the rows read (each sent or
        charged a failure)."""
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
        queues, acks = Queues(), Acks(self._wake)
        latest = self._read(cur, lanes, queues, acks)  # sent by the latest read, not yet settled
        read = len(queues.seen)
        reading_until = time.monotonic() + READING_S
        give_up = time.monotonic() + self.timeout_s
        sent: list[outbox.Row] = []
        rejected: list[tuple[outbox.Row, str]] = []
        while not queues.idle:
            self._wait(give_up)
            acked_at = time.time()
            for row, failure in acks.take():
                latest.discard(row.id)
                if failure is None:
                    sent.append(row)
                    LATENCY.observe(max(0.0, acked_at - row.created_at.timestamp()))
                    following = queues.acked(row)
                    if following is not None:
                        self._send(following, acks)
                elif is_outage(failure):
                    raise KafkaUnavailable(repr(failure)) from failure
                else:
                    queues.refused(row)
                    rejected.append((row, f"{type(failure).__name__}: {failure}"))
            # Reads follow each other an acknowledgement round trip apart: more often would
            # spend CPU on reads of a row or two.
            more = not latest and read < self.cfg.outbox_batch
            if more and time.monotonic() < reading_until and self.listener.pending():
                latest = self._read(cur, lanes, queues, acks)
                read = len(queues.seen)
        outbox.mark_sent(cur, [row.id for row in sent])
        PUBLISHED.labels(self.cfg.job_topic).inc(len(sent))
        for row, error in rejected:
            self._settle_failure(cur, row, error)
        return read

    def _read(self, cur: Cursor, lanes: list[int], queues: Queues, acks: Acks) -> set[int]:
        """Read what is ready (beyond what this cycle has) and send each device's first row;
        returns the ids sent."""
        self.listener.clear()  # the read sees every row whose NOTIFY came before it
        rows = outbox.ready_rows(
            cur,
            lanes,
            self.cfg.outbox_lanes,
            self.cfg.outbox_batch - len(queues.seen),
            skip_ids=queues.seen,
            skip_devices=sorted(queues.failed),
        )
        now = queues.add(rows)
        for row in now:
            self._send(row, acks)
        return {row.id for row in now}

    def _wait(self, give_up: float) -> None:
        """Until an acknowledgement or a NOTIFY arrives."""
        left = give_up - time.monotonic()
        if left <= 0:
            raise KafkaUnavailable(f"no acknowledgement within {self.timeout_s:.0f} s")
        watched = [self._woken, *self.listener.fileno()]
        ready = select.select(watched, [], [], left)[0]
        if self._woken in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._woken, 4096)
        if len(ready) > (self._woken in ready):
            self.listener.poll()  # a NOTIFY: off the socket, so the next select waits again

    def _send(self, row: outbox.Row, acks: Acks) -> None:
        trace = row.traceparent
        if tracing.enabled():
            # The send's span, under the trace of the change that wrote the row, ends once the
            # record is handed to the producer (LATENCY measures the acknowledgement).
            with tracing.span(f"{self.cfg.job_topic} publish", kind=tracing.Kind.PRODUCER,
                              parent=trace, attributes={"event_id": row.event_id}):  # fmt: skip
                trace = tracing.traceparent(new=False)
        try:
            future = self.producer.send(
                self.cfg.job_topic,
                key=row.partition_key.encode(),
                value=row.value(),
                headers=headers(row, self.cfg.event_source, trace),
            )
        except Exception as exc:  # raised at once, e.g. larger than max_request_size
            if is_outage(exc):
                raise KafkaUnavailable(repr(exc)) from exc
            acks.put(row, exc)
            return
        acks.watch(row, future)

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
        pause = 0.5
        try:
            while not self.stop.is_set():
                try:
                    read = self.cycle()
                    pause = 0.5
                except (KafkaUnavailable, DependencyUnavailable) as exc:
                    ERRORS.labels("unavailable").inc()
                    log.warning("relay cycle failed, retrying", extra={"error": str(exc)[:300],
                                "retry_in_s": pause})  # fmt: skip
                    self.stop.wait(pause)
                    pause = min(pause * 2, 10)
                    continue
                if read >= self.cfg.outbox_batch:
                    self._refresh_status()
                    continue  # a full batch: there may be more right now
                # Rows committed during the cycle have NOTIFYed (the wait returns at once); the
                # status says whether a committed row still waits below an open transaction.
                wait = self.cfg.outbox_poll_s
                with_status = self._refresh_status(force=True)
                if with_status is not None:
                    if with_status.behind_horizon:
                        wait = 0.01  # a transaction is still open below a committed row
                    elif with_status.next_retry_s is not None:
                        wait = min(wait, max(0.01, with_status.next_retry_s))
                self.listener.wait(wait)
        finally:
            self.listener.close()
            os.close(self._woken)
            os.close(self._wake)

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
    """LISTEN ota_outbox on its own connection. A NOTIFY stays pending until `clear`, which a
    cycle calls just before it reads the outbox (that read sees the notifying row)."""

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

    def fileno(self) -> list[Any]:
        """What to select() on for the next NOTIFY ([] while disconnected)."""
        return [] if self.conn is None else [self.conn]

    def poll(self, connect: bool = False) -> None:
        """Take the NOTIFYs that arrived off the socket (without waiting)."""
        import psycopg2

        try:
            if self.conn is None and connect:
                self.conn = self._connect()
            if self.conn is not None:
                self.conn.poll()
        except (OSError, psycopg2.Error) as exc:  # reconnect between cycles; poll meanwhile
            log.warning("LISTEN connection lost", extra={"error": repr(exc)})
            self.close()

    def pending(self) -> bool:
        self.poll()
        return self.conn is not None and bool(self.conn.notifies)

    def clear(self) -> None:
        if self.conn is not None:
            self.conn.notifies.clear()

    def wait(self, timeout: float) -> None:
        """Until a NOTIFY (at once if one is pending) or the timeout."""
        self.poll(connect=True)
        if self.conn is None:
            self.stop.wait(timeout)
        elif not self.conn.notifies:
            select.select([self.conn], [], [], timeout)
            self.poll()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing the LISTEN connection failed")
            self.conn = None


def producer(**overrides: Any) -> KafkaProducer:
    # No linger: a cycle no longer flushes (it goes on reading while acknowledgements are
    # outstanding), and records sent while a request is in flight still batch up behind it.
    return clients.kafka.producer(NAME, **({"linger_ms": 0} | overrides))


def main() -> int:
    objectflow_logging.configure(NAME)
    tracing.configure(NAME)
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
