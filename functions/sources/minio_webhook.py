"""MinIO bucket notifications -> CloudEvents: a functions-framework HTTP function.

    functions-framework --asgi --source functions/sources/minio_webhook.py --target minio_webhook

MinIO posts S3 event JSON (`{"EventName", "Key", "Records": [...]}`) with
`Authorization: Bearer $MINIO_WEBHOOK_TOKEN`. Each record becomes one CloudEvent
(`objectflow.s3.object.created.v1` / `.removed.v1`, subject `bucket/key`) posted to `K_SINK`.
Answers: 200 once every event was accepted, 401 for a missing or wrong token, 400 with the
reason for a body it cannot read (kept in the dead-letter store, see `dead_letter`), 413 for a
body above `OBJECTFLOW_MAX_EVENT_BYTES`, 503 when the sink or the dead-letter store is
unavailable, so MinIO keeps the notification in its queue dir and retries it (the stable ids make
the retried events dedupe downstream). Nothing a sender controls answers a 5xx: MinIO retries
every non-2xx answer of a queued notification every few seconds, and the notifications queued
behind it wait, so a 5xx for one bad record would hold up all of them. MinIO leaves `size` out
of the record of an empty object; that is a size of 0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from cloudevents.http import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from functions.deadletter import store as dead_letters
from functions.runtime import (
    BadRequest,
    ObjectflowError,
    SettingsError,
    http_function,
    settings,
    tracing,
)
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import PayloadTooLarge, Unauthorized
from functions.sources import sink
from functions.sources.events import S3ObjectCreated, S3ObjectEvent, S3ObjectRemoved

NAME = "minio-webhook"
TOKEN_ENV = "MINIO_WEBHOOK_TOKEN"
META_PREFIX = "x-amz-meta-"
TYPES: dict[str, tuple[str, type[S3ObjectEvent]]] = {
    "s3:ObjectCreated:": ("objectflow.s3.object.created.v1", S3ObjectCreated),
    "s3:ObjectRemoved:": ("objectflow.s3.object.removed.v1", S3ObjectRemoved),
}
log = logging.getLogger("objectflow.sources.minio_webhook")


# --- the notification as MinIO sends it (only the fields we read) ----------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class S3Object(_Model):
    key: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0, description="MinIO omits it when it is 0")
    etag: str | None = Field(default=None, alias="eTag")
    content_type: str | None = Field(default=None, alias="contentType")
    user_metadata: dict[str, str] = Field(default_factory=dict, alias="userMetadata")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None


class S3Bucket(_Model):
    name: str = Field(min_length=1)


class S3Entity(_Model):
    bucket: S3Bucket
    object: S3Object


class Record(_Model):
    event_name: str = Field(alias="eventName")
    event_time: datetime = Field(alias="eventTime")
    s3: S3Entity


class Notification(_Model):
    records: list[Record] = Field(alias="Records")


# --- domain: record -> CloudEvent --------------------------------------------------------------


def event_type(event_name: str) -> tuple[str, type[S3ObjectEvent]] | None:
    """(CloudEvent type, data model) of an S3 event name; None for events we do not forward."""
    return next((t for prefix, t in TYPES.items() if event_name.startswith(prefix)), None)


def user_metadata(raw: dict[str, str]) -> dict[str, str]:
    """`X-Amz-Meta-Camera-Id: 7` -> `camera-id: 7`; system entries (content-type) are dropped."""
    return {
        name.lower().removeprefix(META_PREFIX): value
        for name, value in raw.items()
        if name.lower().startswith(META_PREFIX)
    }


def event_id(bucket: str, key: str, version_id: str | None, sequencer: str | None) -> str:
    """Same notification, same id: MinIO's retries of a queued notification dedupe downstream."""
    parts = (bucket, key, version_id or "", sequencer or "")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def to_cloudevent(record: Record, traceparent: str | None = None) -> CloudEvent | None:
    """The CloudEvent for one record, validated against the catalog; None for other events."""
    found = event_type(record.event_name)
    if found is None:
        return None
    ce_type, model = found
    obj, bucket = record.s3.object, record.s3.bucket.name
    key = unquote_plus(obj.key)  # MinIO URL-encodes keys in notifications, space as `+`
    fields = {"size": obj.size} if obj.size is not None else {}  # missing: the model's default
    data = model.model_validate(
        {
            **fields,
            "bucket": bucket,
            "key": key,
            "etag": obj.etag,
            "content_type": obj.content_type,
            "user_metadata": user_metadata(obj.user_metadata),
            "version_id": obj.version_id,
            "sequencer": obj.sequencer,
            "event_name": record.event_name,
            "event_time": record.event_time,
        }
    )
    attributes = {
        "id": event_id(bucket, key, obj.version_id, obj.sequencer),
        "source": f"minio:{bucket}",
        "type": ce_type,
        "subject": f"{bucket}/{key}",
        "time": record.event_time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        # the writer's trace, which objectflow's S3 client stores as object metadata
        "traceparent": data.user_metadata.get("traceparent")
        or traceparent
        or objectflow_logging.new_traceparent(),
    }
    return CloudEvent(attributes, data.model_dump(mode="json"))


class BadNotification(BadRequest):
    code = "bad-notification"


def _reason(exc: ValidationError) -> BadNotification:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return BadNotification(f"not a MinIO notification: {where}: {first['msg']}", field=where)


def to_cloudevents(body: bytes, traceparent: str | None = None) -> tuple[list[CloudEvent], int]:
    """(events to forward, records skipped) of a notification body; every record is checked
    before anything is forwarded. Raises BadNotification, and nothing else, for what it cannot
    read: the sender controls the body, so no body may end in a 5xx."""
    try:
        notification = Notification.model_validate_json(body)
    except ValidationError as exc:
        raise _reason(exc) from None
    events, skipped = [], 0
    for n, record in enumerate(notification.records):
        try:
            event = to_cloudevent(record, traceparent)
        except ValidationError as exc:
            reason = _reason(exc)
            raise BadNotification(f"Records.{n}: {reason.detail}", field=reason.field) from None
        if event is None:
            log.info(
                "skipping event %s", record.event_name, extra={"bucket": record.s3.bucket.name}
            )
            skipped += 1
        else:
            events.append(event)
    return events, skipped


DEAD_LETTER_DESTINATION = f"urn:objectflow:{NAME}"  # never redriven: the body stays unreadable
UNREADABLE_TYPE = "objectflow.s3.notification.unreadable.v1"


def dead_letter(body: bytes, rejection: BadNotification) -> int:
    """Keep an unreadable notification in the dead-letter store (`objectflow dlq list`).

    One row per distinct body: MinIO retrying it refreshes the row instead of adding one."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": hashlib.sha256(body).hexdigest()[:32],
        "source": f"/objectflow/sources/{NAME}",
        "type": UNREADABLE_TYPE,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    try:
        event.update(datacontenttype="application/json", data=json.loads(body))
    except ValueError:  # not JSON (or not UTF-8): kept byte for byte
        event.update(
            datacontenttype="application/octet-stream",
            data_base64=base64.b64encode(body).decode(),
        )
    letter = dead_letters.DeadLetter(
        event=event,
        destination=DEAD_LETTER_DESTINATION,
        status_code=rejection.status,
        response_body=json.dumps(rejection.body()),
        attempts=1,
        trigger_name=NAME,
    )
    return dead_letters.save(letter)


def authorized(header: str | None, token: str) -> bool:
    scheme, _, presented = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), token.encode())


# --- the HTTP function ------------------------------------------------------------------------


_SESSIONS = sink.Sessions()  # keep-alive to the sink across notifications


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise SettingsError(TOKEN_ENV, "must be set to the token MinIO's webhook target sends")
    return token


class SinkDown(ObjectflowError):
    """The sink did not take the events now: a 503, so MinIO keeps the notification queued."""

    status = 503
    code = "sink-unavailable"


def _forward(events: list[CloudEvent]) -> None:
    """Post every event; a rejected one is logged and dropped (it can never be accepted)."""
    url = sink.sink_url()
    for event in events:
        with (
            tracing.span("s3 notification", kind=tracing.Kind.CONSUMER,
                         parent=event["traceparent"], attributes={"s3.object": event["subject"]}),
            objectflow_logging.event_context(
                event_id=event["id"],
                event_type=event["type"],
                event_subject=event["subject"],
                traceparent=(trace := tracing.traceparent()),
            ),
        ):  # fmt: skip
            event["traceparent"] = trace
            try:
                sink.post(_SESSIONS.get(), url, event)
            except sink.SinkRejected as exc:
                log.error("sink rejected the event for good", extra={"error": str(exc)})
                sink.MESSAGES.labels(NAME, "rejected").inc()
                continue
            sink.MESSAGES.labels(NAME, "forwarded").inc()
            log.info("object event forwarded")


class Forwarded(BaseModel):
    forwarded: int = Field(description="CloudEvents posted to the sink")


def handle(authorization: str | None, body: bytes, traceparent: str | None) -> Forwarded:
    """Check the token, turn every record into a CloudEvent and post them to the sink."""
    if not authorized(authorization, _token()):
        raise Unauthorized("missing or wrong bearer token")
    try:
        events, skipped = to_cloudevents(body, traceparent)
    except BadNotification as exc:
        letter = dead_letter(body, exc)
        log.warning(
            "unreadable notification dead-lettered",
            extra={"dead_letter_id": letter, "error": exc.detail},
        )
        sink.MESSAGES.labels(NAME, "unreadable").inc()
        raise
    sink.MESSAGES.labels(NAME, "received").inc(len(events) + skipped)
    sink.MESSAGES.labels(NAME, "skipped").inc(skipped)
    try:
        _forward(events)
    except sink.SinkUnavailable as exc:
        log.warning("sink unavailable; MinIO will retry", extra={"error": str(exc)})
        sink.SINK_RETRIES.labels(NAME).inc()
        raise SinkDown(str(exc)) from None
    return Forwarded(forwarded=len(events))


api = http_function(NAME, summary="MinIO bucket notifications to CloudEvents")


@api.post("/", response_model=Forwarded)
async def notify(request: Request) -> Forwarded:
    """One MinIO notification (`Authorization: Bearer $MINIO_WEBHOOK_TOKEN`)."""
    limit = settings.runtime().max_event_bytes
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"notification body exceeds {limit} bytes")
    headers = request.headers
    return await run_in_threadpool(
        handle, headers.get("authorization"), bytes(body), headers.get("traceparent")
    )


minio_webhook = api.target
