"""dead-letter — the sink for events a trigger gave up on (Knative `deadLetterSink`).

Knative (and the local broker) send the original CloudEvent with extensions describing the last
failure: `knativeerrordest` (subscriber URL), `knativeerrorcode` (its last HTTP status) and
`knativeerrordata` (its response body, base64, at most 1 KiB). The local broker adds
`objectflowattempts`, `objectflowtrigger`, `objectflowfirstattempt` and `objectflowlastattempt`.
Everything is stored so `objectflow dlq list|show|redrive|purge` can inspect and re-deliver.

Any CloudEvent is accepted and recorded with what it tells: Knative's MT broker sends timeouts and
a 2xx whose body is no CloudEvent without any `knativeerror*` extension (eventing
event_dispatcher.go `dispatchExecutionInfoTransformers`), and does not retry a 400 from this
sink, so refusing such a letter would lose the event. Its destination is then unknown ("").
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import datetime
from typing import Any, Literal

from cloudevents.conversion import to_dict
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from functions.deadletter import store
from functions.runtime import http_function, registry
from functions.runtime import logging as objectflow_logging
from functions.runtime.http import read_cloudevent
from functions.runtime.metrics import EVENTS

log = logging.getLogger("objectflow.dead-letter")
ERROR_EXTENSIONS = (
    "knativeerrordest",
    "knativeerrorcode",
    "knativeerrordata",
    "objectflowattempts",
    "objectflowtrigger",
    "objectflowfirstattempt",
    "objectflowlastattempt",
)


def decode_error_data(value: str | None) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return value  # older senders put the body in as text


def letter_from(event: dict[str, Any]) -> store.DeadLetter:
    """Split a dead-lettered CloudEvent into the original event and its failure record."""
    original = {k: v for k, v in event.items() if k not in ERROR_EXTENSIONS}
    destination = event.get("knativeerrordest") or store.UNKNOWN_DESTINATION
    code = _number(event, "knativeerrorcode")
    attempts = _number(event, "objectflowattempts") or 1
    first, last = _moment(event, "objectflowfirstattempt"), _moment(event, "objectflowlastattempt")
    return store.DeadLetter(
        event=original,
        destination=str(destination),
        status_code=code,
        response_body=decode_error_data(event.get("knativeerrordata")),
        attempts=attempts,
        trigger_name=event.get("objectflowtrigger"),
        first_attempt_at=first,
        last_attempt_at=last,
    )


def _number(event: dict[str, Any], name: str) -> int | None:
    """An integer extension; a malformed one is recorded as unknown rather than refused."""
    try:
        return int(event[name]) if event.get(name) else None
    except ValueError:
        log.warning("ignoring a malformed extension", extra={"extension": name})
        return None


def _moment(event: dict[str, Any], name: str) -> datetime | None:
    try:
        return datetime.fromisoformat(event[name]) if event.get(name) else None
    except ValueError:
        log.warning("ignoring a malformed extension", extra={"extension": name})
        return None


class Stored(BaseModel):
    status: Literal["stored"] = "stored"
    id: int = Field(description="The dead letter's id (objectflow dlq show <id>)")


api = http_function("dead-letter", summary="The dead-letter sink of every trigger")


@api.post("/", status_code=202, response_model=Stored)
async def receive(request: Request) -> Stored:
    """Store one dead-lettered CloudEvent of any type; 202 once it is durable."""
    ce = await read_cloudevent(request)
    event = to_dict(ce)
    if isinstance(event.get("data"), bytes):
        event["data_base64"] = base64.b64encode(event.pop("data")).decode()
    letter = letter_from(event)
    with objectflow_logging.event_context(
        event_id=ce["id"], event_type=ce["type"], event_source=ce["source"]
    ):
        letter_id = await run_in_threadpool(store.save, letter)
        log.warning(
            "event dead-lettered",
            extra={"dead_letter_id": letter_id, "destination": letter.destination,
                   "status": letter.status_code, "attempts": letter.attempts},
        )  # fmt: skip
    known = registry.lookup(ce["type"]) is not None
    EVENTS.labels("dead-letter", ce["type"] if known else "other", "stored").inc()
    return Stored(id=letter_id)


dead_letter = api.target
