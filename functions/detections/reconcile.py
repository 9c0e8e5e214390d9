"""detections-reconcile — fired by the `detections-reconcile` schedule (every minute).

Reports documents `predictable` for longer than `DETECTIONS_STUCK_AFTER_SECONDS` (by their
`created_at`, else their ObjectId's time), counting those rejected with an `outbox_error`
apart, and checks that the object of every document made `ready` within
`DETECTIONS_RECONCILE_WINDOW_SECONDS` still exists; a missing one is re-opened to `predictable`
(under a claim) so the source posts it and it is written again. Replies with the counts.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from functions.detections import metrics, objects, outbox
from functions.detections import settings as detections_settings
from functions.detections.events import RECONCILED, ReconcileReport
from functions.detections.writer import now
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.runtime.errors import DependencyUnavailable
from functions.sources.events import Ping

log = logging.getLogger("objectflow.detections.reconcile")
WAITING = {"_id": 1, "event_id": 1, "created_at": 1, "outbox_error": 1}


def _object_of(document: outbox.Document) -> tuple[str, str] | None:
    url = document.get("output_s3")
    if not isinstance(url, str) or not url.startswith("s3://") or "/" not in url[5:]:
        return None
    bucket, key = url[5:].split("/", 1)
    return bucket, key


def reopen_if_missing(collection: str, document: outbox.Document) -> bool:
    """Re-open a ready document whose object is gone; False if it is there (or moved on)."""
    location = _object_of(document)
    if location is not None and clients.s3.call(lambda s3: objects.object_exists(s3, *location)):
        return False
    key = outbox.document_key(document["_id"])
    owner = f"detections-reconcile/{uuid.uuid4().hex}"
    cfg = detections_settings.detections()

    def apply(db: Any) -> bool:
        claims = outbox.Claims.of(db[collection])
        claim = claims.take(key, owner, cfg.lease_seconds, now())
        if claim is None:
            return False  # a worker is on it right now
        try:
            return outbox.reopen(db[collection], document["_id"], now())
        finally:
            claims.release(claim, now())

    reopened = clients.mongodb.call(apply)
    if reopened:
        log.warning(
            "object missing; document re-opened",
            extra={"event_id": document.get("event_id"), "object": document.get("output_s3")},
        )
    return reopened


def reconcile(collection: str) -> ReconcileReport:
    cfg = detections_settings.detections()
    moment = now()
    waiting = clients.mongodb.call(
        lambda db: list(
            db[collection].find({"status": outbox.PREDICTABLE}, WAITING).limit(cfg.reconcile_batch)
        )
    )
    stuck = rejected = 0
    for document in waiting:
        waited = outbox.age(document, moment)
        if document.get("outbox_error"):
            rejected += 1
            metrics.RECONCILED.labels("rejected").inc()
        if waited is not None and waited > cfg.stuck_after_seconds:
            stuck += 1
            metrics.RECONCILED.labels("stuck").inc()
            log.warning(
                "document stuck in predictable",
                extra={"event_id": document.get("event_id"), "age_s": round(waited),
                       "outbox_error": document.get("outbox_error")},
            )  # fmt: skip
    since = moment - timedelta(seconds=cfg.reconcile_window_seconds)
    ready = clients.mongodb.call(
        lambda db: list(
            db[collection]
            .find({"status": outbox.READY, "ready_at": {"$gte": since}}, {"prediction": 0})
            .limit(cfg.reconcile_batch)
        )
    )
    reopened = errors = 0
    last_error: DependencyUnavailable | None = None
    for document in ready:
        try:
            if reopen_if_missing(collection, document):
                reopened += 1
                metrics.RECONCILED.labels("reopened").inc()
        except DependencyUnavailable as exc:
            errors, last_error = errors + 1, exc
            metrics.RECONCILED.labels("error").inc()
        metrics.RECONCILED.labels("checked").inc()
    if last_error is not None and errors == len(ready):
        raise last_error  # nothing got through: let the broker retry the tick
    report = ReconcileReport(
        predictable=len(waiting), stuck=stuck, rejected=rejected, checked=len(ready),
        reopened=reopened, errors=errors,
    )  # fmt: skip
    log.info("reconciliation run", extra=report.model_dump())
    return report


@cloudevent_function("detections-reconcile", accepts=["dev.knative.sources.ping"], idempotent=False)
def detections_reconcile(event: Event[Ping]) -> Reply:
    return Reply(RECONCILED, reconcile(detections_settings.detections().collection))
