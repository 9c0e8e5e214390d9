"""dead-letter — the sink for events a trigger gave up on (Knative `deadLetterSink`).

Knative (and the local broker) send the original CloudEvent with extensions describing the last
failure: `knativeerrordest` (subscriber URL), `knativeerrorcode` (its last HTTP status) and
`knativeerrordata` (its response body, base64, at most 1 KiB). The local broker adds
`objectflowattempts`, `objectflowtrigger`, `objectflowfirstattempt` and `objectflowlastattempt`.
Everything is stored so `objectflow dlq list|show|redrive|purge` can inspect and re-deliver.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import datetime
from typing import Any

import flask
import functions_framework
from cloudevents.conversion import to_dict

from functions.deadletter import store
from functions.runtime import adapter
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import BadEvent, ObjectflowError

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
    destination = event.get("knativeerrordest")
    if not destination:
        raise BadEvent("missing the knativeerrordest extension", field="knativeerrordest")
    try:
        code = int(event["knativeerrorcode"]) if event.get("knativeerrorcode") else None
        attempts = int(event.get("objectflowattempts") or 1)
    except ValueError as exc:
        raise BadEvent(f"malformed error extension: {exc}", field="knativeerrorcode") from None
    first, last = event.get("objectflowfirstattempt"), event.get("objectflowlastattempt")
    return store.DeadLetter(
        event=original,
        destination=str(destination),
        status_code=code,
        response_body=decode_error_data(event.get("knativeerrordata")),
        attempts=attempts,
        trigger_name=event.get("objectflowtrigger"),
        first_attempt_at=datetime.fromisoformat(first) if first else None,
        last_attempt_at=datetime.fromisoformat(last) if last else None,
    )


@functions_framework.http
def dead_letter(request: flask.Request) -> flask.Response:
    """Store one dead-lettered CloudEvent of any type; 202 once it is durable."""
    objectflow_logging.configure("dead-letter")
    if request.method == "GET":
        return adapter.answer_get("dead-letter", request.path)
    try:
        ce = adapter.read_cloudevent(request)
        event = to_dict(ce)
        if isinstance(event.get("data"), bytes):
            event["data_base64"] = base64.b64encode(event.pop("data")).decode()
        letter = letter_from(event)
        with objectflow_logging.event_context(
            event_id=ce["id"], event_type=ce["type"], event_source=ce["source"]
        ):
            letter_id = store.save(letter)
            log.warning(
                "event dead-lettered",
                extra={"dead_letter_id": letter_id, "destination": letter.destination,
                       "status": letter.status_code, "attempts": letter.attempts},
            )  # fmt: skip
        body = {"status": "stored", "id": letter_id}
        return flask.Response(json.dumps(body), status=202, mimetype="application/json")
    except ObjectflowError as exc:
        return flask.Response(
            json.dumps(exc.body()), status=exc.status, mimetype="application/json"
        )
