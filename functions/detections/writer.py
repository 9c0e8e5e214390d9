"""Write one outbox document: claim it, validate, upload, mark it ready. Plain domain code.

The steps, each within the backends' retry budget and each safe to repeat:

1. claim the document (functions.detections.outbox.Claims): another worker holds it -> "busy";
2. read it under the claim: gone, or no longer predictable (a replay after `ready`) -> no effect;
3. validate it and check the bucket; a bad one gets `outbox_error` and raises Rejected;
4. upload the canonical JSON unless an identical object is there (functions.detections.objects);
5. only if the claim is still ours, set `status: ready`, `output_s3`, `ready_at`.

A crash or outage anywhere leaves the document `predictable` with at most an identical object
written; the claim expires after the lease and the source posts the document again.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from functions.detections import objects, outbox
from functions.detections import settings as detections_settings
from functions.detections.events import PredictionPredictable
from functions.runtime import clients
from functions.runtime.errors import DependencyUnavailable

log = logging.getLogger("objectflow.detections.writer")
Outcome = Literal["uploaded", "identical", "overwritten", "busy", "gone", "done", "lost-claim"]
_BUCKETS: set[str] = set()  # buckets seen to exist; a deleted one still fails the PUT


def now() -> datetime:
    return datetime.now(UTC)


def _bucket_exists(bucket: str) -> bool:
    if bucket not in _BUCKETS and clients.s3.call(lambda s3: objects.bucket_exists(s3, bucket)):
        _BUCKETS.add(bucket)
    return bucket in _BUCKETS


def write(ref: PredictionPredictable, owner: str) -> Outcome:
    """Write the document `ref` names; raises outbox.Rejected for a bad one (after recording
    the reason on it) and DependencyUnavailable for an outage."""
    cfg = detections_settings.detections()
    document_id = outbox.from_reference(ref.document_id)
    key = outbox.document_key(document_id)

    def claims(db: Any) -> outbox.Claims:
        return outbox.Claims.of(db[ref.collection])

    claim = clients.mongodb.call(lambda db: claims(db).take(key, owner, cfg.lease_seconds, now()))
    if claim is None:
        return "busy"
    finished = False
    try:
        document = clients.mongodb.call(
            lambda db: db[ref.collection].find_one({"_id": document_id})
        )
        if document is None:
            return "gone"
        if document.get("status") != outbox.PREDICTABLE:
            finished = True
            return "done"
        try:
            prediction = outbox.prediction(document, cfg.max_prediction_bytes)
            if not _bucket_exists(prediction.bucket):
                raise outbox.Rejected("bucket", f"no bucket {prediction.bucket!r}")
            written = _upload(prediction)
        except outbox.Rejected as rejected:
            reason = rejected.reason
            clients.mongodb.call(
                lambda db: outbox.record_error(db[ref.collection], document_id, reason, now())
            )
            finished = True  # nothing more to do until someone fixes the document
            raise
        if not clients.mongodb.call(lambda db: claims(db).held(claim, now())):
            log.warning("claim taken over after the lease; leaving the document to its new owner")
            return "lost-claim"
        clients.mongodb.call(
            lambda db: outbox.mark_ready(db[ref.collection], document_id, prediction.url, now())
        )
        finished = True
        log.info("prediction written", extra={"object": prediction.url, "written": written})
        return written
    finally:
        # Best effort: if MongoDB is down the claim simply expires after the lease.
        def release(db: Any) -> None:
            if finished:
                claims(db).clear(claim)
            else:
                claims(db).release(claim, now())

        with contextlib.suppress(DependencyUnavailable):
            clients.mongodb.call(release)


def _upload(prediction: outbox.Prediction) -> objects.Written:
    from botocore.exceptions import ClientError

    try:
        return clients.s3.call(lambda s3: objects.write(s3, prediction))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":  # deleted meanwhile
            _BUCKETS.discard(prediction.bucket)
            raise outbox.Rejected("bucket", f"no bucket {prediction.bucket!r}") from None
        raise
