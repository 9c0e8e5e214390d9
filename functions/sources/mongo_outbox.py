"""MongoDB outbox -> CloudEvents: `python -m functions.sources.mongo_outbox`.

Finds the documents of one collection with `status: "predictable"` and no `outbox_error` and
posts one CloudEvent per document to `K_SINK`: id = subject = the document's `event_id` (stable,
so redeliveries dedupe), data = a reference to the document (`collection`, `document_id`).
Where the server has change streams (MongoDB) it posts on each insert or update and rescans
every half lease; elsewhere (FerretDB) it polls every `DETECTIONS_POLL_INTERVAL` over an index
on `status`, pausing longer after a scan that itself took long (`SCAN_PAUSE`).

It does not flood: a document is posted again only when it is still predictable a lease
(`DETECTIONS_LEASE_SECONDS`) after the sink accepted it, which is also how a document whose
worker crashed is picked up. Acknowledgement as the MQTT bridge's: a document counts as posted
only once the sink accepted its event, and the document itself is the durable copy, so nothing
is lost while the broker, a function, MongoDB or this process is down; MongoDB and the sink are
retried with jittered exponential backoff.

Settings: `K_SINK`, `OBJECTFLOW_OUTBOX_COLLECTION`, `OBJECTFLOW_OUTBOX_TYPE` (values.yaml
`sources.mongo-outbox`), `OBJECTFLOW_OUTBOX_CONCURRENCY`, `OBJECTFLOW_METRICS_PORT` (optional),
`MONGODB_URI` and the `DETECTIONS_*` timings.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent
from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.detections import outbox
from functions.detections import settings as detections_settings
from functions.detections.events import COLLECTION
from functions.runtime import logging as objectflow_logging
from functions.runtime import settings
from functions.sources import lifecycle, sink
from functions.sources.routes import MongoOutbox

SOURCE = "mongo-outbox"
log = logging.getLogger("objectflow.sources.mongo_outbox")
# Servers without change streams: FerretDB answers NotImplemented, a standalone MongoDB 40573.
NO_CHANGE_STREAMS = {238, 40573, 115, 136}
# The pause after a scan is at least this many times the scan's own time: on FerretDB a scan
# decodes every document of the collection (history included), and scanning back to back
# would take the CPU the status updates need. So scans use at most a quarter of the time.
SCAN_PAUSE = 3.0

DOCUMENTS = Counter(
    "objectflow_outbox_documents_total",
    "Outbox documents by outcome (found: seen predictable for the first time, posted, reposted: "
    "posted again after the lease, rejected: the sink refused the event for good).",
    ["source", "outcome"],
)
LAG = Gauge(
    "objectflow_outbox_lag_seconds",
    "Age of the oldest predictable document (created_at, else its ObjectId time) at the last scan.",
    ["source"],
)
WAITING = Gauge("objectflow_outbox_waiting", "Predictable documents at the last scan.", ["source"])


class OutboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBJECTFLOW_OUTBOX_", extra="ignore")

    collection: str = Field(default=MongoOutbox().collection, pattern=COLLECTION)
    type: str = Field(default=MongoOutbox().type, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    concurrency: int = Field(default=8, gt=0, le=256, description="Posts in flight at once")
    metrics_port: int | None = Field(
        default=None, gt=0, lt=65536, validation_alias="OBJECTFLOW_METRICS_PORT"
    )
    max_backoff: float = Field(default=30.0, gt=0, description="Cap of the retry delays (s)")


# --- domain: documents -> CloudEvents, and which are due (no servers involved) ----------------

PROJECTION = {"_id": 1, "event_id": 1, "created_at": 1}
WAITING_FILTER = {"status": outbox.PREDICTABLE, "outbox_error": {"$exists": False}}


def event_id(document: outbox.Document) -> str:
    """The document's event_id; a document without a usable one is named by its `_id` (the
    function rejects it and records why)."""
    found = document.get("event_id")
    if isinstance(found, str) and found:
        return found
    return f"_id:{outbox.document_key(document['_id'])}"


def to_cloudevent(
    document: outbox.Document, collection: str, type_: str, origin: str
) -> CloudEvent:
    """The event for one document; `origin` is `mongodb://host:port/database`."""
    name = event_id(document)
    attributes = {
        "id": name,
        "subject": name,
        "source": f"{origin}/{collection}",
        "type": type_,
        "datacontenttype": "application/json",
        "traceparent": objectflow_logging.new_traceparent(),
    }
    data = {"collection": collection, "document_id": outbox.reference(document["_id"])}
    return CloudEvent(attributes, data)


@dataclass
class Leases:
    """When the sink last accepted each document's event (monotonic seconds)."""

    lease: float
    posted: dict[str, float] = field(default_factory=dict)

    def due(self, key: str, now: float) -> bool:
        last = self.posted.get(key)
        return last is None or now - last >= self.lease

    def accepted(self, key: str, now: float) -> None:
        self.posted[key] = now

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget documents no longer predictable (written, or deleted)."""
        alive = set(keys)
        self.posted = {k: v for k, v in self.posted.items() if k in alive}


# --- the source: scan (or change stream) -> due documents -> posts in parallel ---------------


class Outbox:
    def __init__(self, config: OutboxSettings, sink_url: str) -> None:
        import pymongo

        cfg = settings.mongo()
        self.config = config
        self.timing = detections_settings.detections()
        self.sink_url = sink_url
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            cfg.uri.get_secret_value(), serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
            tz_aware=True,
        )  # fmt: skip
        self.collection = self.client[cfg.database_name][config.collection]
        host, port = pymongo.uri_parser.parse_uri(cfg.uri.get_secret_value())["nodelist"][0]
        self.origin = f"mongodb://{host}:{port}/{cfg.database_name}"
        self.leases = Leases(self.timing.lease_seconds)
        self.stopping = threading.Event()
        self.sessions = sink.Sessions()
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="outbox-post")
        self.failures = 0  # MongoDB failures in a row (the reconnect backoff)

    def prepare(self) -> Any:
        """Indexes (status; the claims' doc + gen), then a change stream if the server has one."""
        from pymongo.errors import OperationFailure

        self.collection.create_index("status")
        outbox.Claims.of(self.collection).ensure_index()
        try:
            stream = self.collection.watch(
                [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}],
                full_document="updateLookup",
                max_await_time_ms=int(self.timing.poll_interval * 1000),
            )
        except OperationFailure as exc:
            if exc.code not in NO_CHANGE_STREAMS:
                raise
            log.info("no change streams on this server; polling", extra={"code": exc.code})
            return None
        log.info("watching a change stream")
        return stream

    def scan(self) -> list[outbox.Document]:
        documents = list(self.collection.find(WAITING_FILTER, PROJECTION))
        moment = datetime.now(UTC)
        ages = [a for a in (outbox.age(d, moment) for d in documents) if a is not None]
        LAG.labels(SOURCE).set(max(ages, default=0.0))
        WAITING.labels(SOURCE).set(len(documents))
        self.leases.keep_only(outbox.document_key(d["_id"]) for d in documents)
        return documents

    def post_due(self, documents: list[outbox.Document]) -> None:
        """Post every document that is due, `concurrency` at a time; returns when all are
        accepted (or refused for good), so the next scan never posts one twice."""
        now = time.monotonic()
        due = [d for d in documents if self.leases.due(outbox.document_key(d["_id"]), now)]
        for _ in self.pool.map(self._post, due):
            pass

    def _post(self, document: outbox.Document) -> None:
        key = outbox.document_key(document["_id"])
        first = key not in self.leases.posted
        event = to_cloudevent(document, self.config.collection, self.config.type, self.origin)
        with objectflow_logging.event_context(
            event_id=event["id"], event_type=event["type"], event_source=event["source"],
            event_subject=event["subject"], traceparent=event["traceparent"],
        ):  # fmt: skip
            if first:
                DOCUMENTS.labels(SOURCE, "found").inc()
            try:
                sink.post_until_accepted(
                    self.sessions.get(), self.sink_url, event, source=SOURCE, stop=self.stopping,
                    max_wait=self.config.max_backoff,
                )  # fmt: skip
                outcome = "posted" if first else "reposted"
            except sink.SinkRejected as exc:
                log.error(
                    "sink refused the event; trying again after the lease",
                    extra={"error": str(exc)},
                )
                outcome = "rejected"
            except sink.SinkUnavailable:
                return  # stopping: not accepted, the next run posts it
            self.leases.accepted(key, time.monotonic())
            DOCUMENTS.labels(SOURCE, outcome).inc()

    def watch(self) -> None:
        """Scan and post until stopping; raises PyMongoError when MongoDB fails."""
        stream = self.prepare()
        every = min(self.timing.lease_seconds / 2, 30.0) if stream else self.timing.poll_interval
        next_scan = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_scan:
                    started = time.monotonic()
                    documents = self.scan()
                    scanned = time.monotonic() - started
                    self.post_due(documents)
                    self.failures = 0
                    next_scan = time.monotonic() + max(every, SCAN_PAUSE * scanned)
                if stream is None:
                    self.stopping.wait(max(0.0, next_scan - time.monotonic()))
                    continue
                change = stream.try_next()
                document = (change or {}).get("fullDocument")
                if (
                    document
                    and document.get("status") == outbox.PREDICTABLE
                    and "outbox_error" not in document
                ):
                    self.post_due([document])
        finally:
            if stream is not None:
                stream.close()

    def run(self) -> None:
        from pymongo.errors import PyMongoError

        log.info(
            "posting outbox documents to the sink",
            extra={"collection": self.config.collection, "sink": self.sink_url},
        )
        while not self.stopping.is_set():
            try:
                self.watch()
            except PyMongoError as exc:
                self.failures += 1
                delay = random.uniform(0, min(self.config.max_backoff, 0.2 * 2**self.failures))
                log.warning(
                    "MongoDB unavailable, reconnecting",
                    extra={
                        "error": str(exc).splitlines()[0],
                        "attempt": self.failures,
                        "wait": round(delay, 2),
                    },
                )
                self.stopping.wait(delay)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        log.info("stopped")

    def stop(self, *_args: object) -> None:
        self.stopping.set()


def build() -> tuple[Outbox, int | None]:
    config = settings.load(OutboxSettings)
    return Outbox(config, sink.sink_url()), config.metrics_port


def main() -> int:
    return lifecycle.main(SOURCE, build)


if __name__ == "__main__":
    sys.exit(main())
