"""camera-reconcile — fired by the `camera-reconcile` schedule (default every minute).

Source document 000's reconciliation: image objects stuck in `pending` longer than
`RECONCILE_PENDING_THRESHOLD_MS` or in `processing` longer than
`RECONCILE_PROCESSING_THRESHOLD_MS` are announced again if their object still exists (HEAD on
its bucket), else marked `failed`. An item re-published `RECONCILE_MAX_REPUBLISH` times is
`failed` too, with the reason. Each run logs and replies its counts and exports them as metrics.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from functions.camera import messages, metrics, records
from functions.camera import settings as camera_settings
from functions.camera.events import ReconcileReport
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.runtime.errors import DependencyUnavailable
from functions.sources.events import Ping

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.camera.reconcile")


def object_exists(bucket: str, key: str) -> bool:
    def head(s3: S3Client) -> bool:
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    return clients.s3.call(head)


def settle(item: records.ImageObject, traceparent: str | None) -> str:
    """Re-publish or fail one stuck item; returns the outcome."""
    cfg = camera_settings.reconcile()
    if not object_exists(item.bucket, item.object_key):
        reason = f"object {item.bucket}/{item.object_key} no longer exists"
    elif item.republish_count >= cfg.max_republish:
        reason = f"still {item.status} after {item.republish_count} re-publishes"
    else:
        reason = None

    def apply(cur: Cursor) -> str:
        if reason is not None:
            return "failed" if records.mark_failed(cur, item, reason) else "skipped"
        if not records.mark_republished(cur, item):
            return "skipped"
        # Published while the counted row is still uncommitted: a failed publish rolls
        # the count back and the next run tries again.
        messages.publish(
            item,
            messages.Written.current(item),
            messages.stage(item.bucket).routing_key,
            datetime.now(UTC),
            dedupe_key=f"{item.bucket}/{item.object_key}#republish-{item.republish_count + 1}",
            traceparent=traceparent,
        )
        return "republished"

    return clients.postgres.transaction(apply)


def reconcile(traceparent: str | None) -> ReconcileReport:
    cfg = camera_settings.reconcile()

    items = clients.postgres.transaction(
        lambda cur: records.stuck(
            cur, cfg.pending_threshold_ms, cfg.processing_threshold_ms, cfg.batch
        )
    )
    counts = {"republished": 0, "failed": 0, "skipped": 0, "error": 0}
    last_error: DependencyUnavailable | None = None
    for item in items:
        try:
            outcome = settle(item, traceparent)
        except DependencyUnavailable as exc:
            outcome, last_error = "error", exc
            log.warning(
                "could not reconcile item", extra={"image_object_id": item.id, "error": exc.detail}
            )
        counts[outcome] += 1
        metrics.RECONCILED.labels(outcome).inc()
    if last_error is not None and counts["error"] == len(items):
        raise last_error  # nothing got through: let the broker retry the tick
    report = ReconcileReport(
        checked=len(items),
        republished=counts["republished"],
        failed=counts["failed"],
        errors=counts["error"],
    )
    log.info("reconciliation run", extra=report.model_dump())
    return report


@cloudevent_function("camera-reconcile", accepts=["dev.knative.sources.ping"], idempotent=False)
def camera_reconcile(event: Event[Ping]) -> Reply:
    return Reply("objectflow.camera.reconciled.v1", reconcile(event.traceparent))
