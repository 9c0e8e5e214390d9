"""The CloudEvent adapter: turns a plain handler into a functions-framework HTTP function.

    @cloudevent_function("echo", accepts=["objectflow.echo.requested.v1"])
    def echo(event: Event[EchoRequest]) -> Reply | None: ...

The adapter owns everything that is not domain logic:
- parses binary or structured CloudEvents and validates `data` against the catalog model
  *before* the handler runs, so a bad event changes nothing;
- maps outcomes to Knative delivery semantics: 2xx ack (optionally with a reply CloudEvent),
  400/413/415/422 for bad events (dead-lettered, never retried), 503 when a dependency
  stayed down for the whole retry budget, 500 for anything unexpected (both retried);
- skips events already handled (idempotency pre-check on `source` + `id`);
- opens a tracing span under the event's `traceparent` (functions.runtime.tracing), which
  the handler's calls and reply continue;
- logs JSON lines with the event's id, type, source, subject and traceparent, exports
  Prometheus metrics on GET /metrics and answers GET /health.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import flask
import functions_framework
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from functions.runtime import cehttp, idempotency, registry, settings, tracing
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import (
    BadEvent,
    InvalidData,
    ObjectflowError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from functions.runtime.metrics import DURATION, ERRORS, EVENTS

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("objectflow.adapter")
REPLY_NAMESPACE = uuid.UUID("6f1c2a43-2d3c-4c1e-9a57-0b8a4c3e5d10")


@dataclass(frozen=True)
class Event(Generic[M]):
    """An incoming CloudEvent whose `data` has been validated into its catalog model."""

    id: str
    source: str
    type: str
    data: M
    subject: str | None = None
    time: str | None = None
    traceparent: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A CloudEvent to send back to the broker as the response of a successful delivery."""

    type: str
    data: BaseModel
    subject: str | None = None


Handler = Callable[[Event[Any]], Reply | None]


def cloudevent_function(
    name: str, *, accepts: Sequence[str], idempotent: bool = True, raw_data: bool = False
) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    """Wrap `handler` as the functions-framework HTTP target of function `name`.

    `raw_data`: data that is not JSON reaches the handler as bytes instead of a 400/415, for a
    handler that must judge every record itself (ota-status dead-letters it with its reason)."""
    unknown = [t for t in accepts if registry.lookup(t) is None]
    if unknown:
        raise ValueError(
            f"{name}: event types {unknown} are not registered; import the events module "
            "of their domain first (functions/<domain>/events.py)"
        )

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        def view(request: flask.Request) -> flask.Response:
            objectflow_logging.configure(name)
            tracing.configure(name)
            if request.method == "GET":
                return answer_get(name, request.path)
            if request.method != "POST":
                return _json(405, {"error": "method-not-allowed", "detail": "POST CloudEvents"})
            return _deliver(name, handler, request, accepts, idempotent, raw_data)

        view.__name__ = handler.__name__
        view.__doc__ = handler.__doc__
        functions_framework.http(view)  # registers the target's signature type by name
        return view

    return decorate


def answer_get(name: str, path: str) -> flask.Response:
    """GET /health and GET /metrics, which every function serves."""
    if path in ("/health", "/healthz", "/readyz"):
        # pid: lets the local runtime tell its own server from a stale one on the same port
        return _json(200, {"status": "ok", "function": name, "pid": os.getpid(), "ts": now()})
    if path == "/metrics":
        return flask.Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
    return _json(404, {"error": "not-found", "detail": f"no GET {path}; try /health or /metrics"})


def _deliver(
    name: str,
    handler: Handler,
    request: flask.Request,
    accepts: Sequence[str],
    idempotent: bool,
    raw_data: bool = False,
) -> flask.Response:
    started = time.perf_counter()
    metric_type = "other"
    context: dict[str, Any] = {}
    try:
        ce = read_cloudevent(request)
        metric_type = ce["type"]
        context = {
            "event_id": ce["id"],
            "event_type": ce["type"],
            "event_source": ce["source"],
            "event_subject": ce.get("subject"),
        }
        incoming = ce.get("traceparent") or request.headers.get("traceparent")
        attributes = {"cloudevents.event_id": ce["id"], "cloudevents.event_type": ce["type"]}
        span = f"{name} {metric_type}"
        with tracing.span(span, kind=tracing.Kind.SERVER, parent=incoming, attributes=attributes):
            context["traceparent"] = tracing.traceparent()
            event = validate(ce, accepts, context["traceparent"], raw_data=raw_data)
            return _handle(name, handler, event, context, idempotent, metric_type, started)
    except ObjectflowError as exc:
        outcome = "rejected" if exc.status < 500 else "retryable"
        with objectflow_logging.event_context(**context):
            log.warning(
                "event %s: %s",
                outcome,
                exc.detail,
                extra={"status": exc.status, "error": exc.code, "field": exc.field},
            )
        ERRORS.labels(name, exc.code).inc()
        body = {**exc.body(), "event_id": context.get("event_id")}
        response = _json(exc.status, body)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return _done(name, metric_type, started, outcome, response)
    except Exception:
        with objectflow_logging.event_context(**context):
            log.exception("event failed with an unexpected error")
        ERRORS.labels(name, "internal").inc()
        body = {"error": "internal", "detail": "unexpected error, see the function's logs"}
        return _done(name, metric_type, started, "error", _json(500, body))


def _handle(
    name: str,
    handler: Handler,
    event: Event[Any],
    context: dict[str, Any],
    idempotent: bool,
    metric_type: str,
    started: float,
) -> flask.Response:
    with objectflow_logging.event_context(**context):
        if idempotent and idempotency.already_handled(name, event.source, event.id):
            log.info("duplicate event acknowledged without effect")
            return _done(name, metric_type, started, "duplicate", flask.Response(status=204))
        reply = handler(event)
        if idempotent:
            idempotency.remember(name, event.source, event.id)
        log.info("event handled", extra={"reply_type": reply.type if reply else None})
        response = _reply(name, event, reply) if reply else flask.Response(status=204)
        return _done(name, metric_type, started, "ok", response)


def read_cloudevent(request: flask.Request) -> CloudEvent:
    """Read a binary or structured CloudEvent from `request` within the size limit."""
    limit = settings.runtime().max_event_bytes
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    return decode_cloudevent(dict(request.headers), body)


def decode_cloudevent(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """A binary or structured CloudEvent from an HTTP request's headers and body."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if content_type.split(";")[0].strip().lower() == "application/cloudevents-batch+json":
        raise UnsupportedMediaType("batched CloudEvents are not supported; send one per request")
    try:
        return cehttp.decode(dict(headers), body)
    except GenericException as exc:
        raise BadEvent(f"not a valid CloudEvent: {exc}") from None


def validate(
    ce: CloudEvent, accepts: Sequence[str], traceparent: str | None, *, raw_data: bool = False
) -> Event[Any]:
    """Check the event's type and content type and validate its data into the catalog model
    (with `raw_data`, data that is not JSON is passed on as bytes)."""
    event_type = ce["type"]
    if event_type not in accepts:
        raise BadEvent(
            f"event type {event_type!r} is not handled here (accepts: {', '.join(accepts)})",
            field="type",
        )
    content_type = ce.get("datacontenttype")
    data = ce.get_data()
    if raw_data and isinstance(data, bytes | bytearray):
        return _event(ce, event_type, bytes(data), traceparent)
    if content_type and not _is_json(content_type) and not raw_data:
        raise UnsupportedMediaType(
            f"data is not JSON (datacontenttype {content_type!r}); send application/json",
            field="datacontenttype",
        )
    if isinstance(data, bytes | bytearray):
        raise BadEvent("data is not valid JSON", field="data")
    model = registry.get(event_type).model
    try:
        validated = model.model_validate({} if data is None else data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "data", "error": e["msg"]}
            for e in exc.errors(include_input=False, include_url=False)
        ]
        first = errors[0]
        raise InvalidData(
            f"{first['field']}: {first['error']}", field=first["field"], errors=errors
        ) from None
    return _event(ce, event_type, validated, traceparent)


def _event(ce: CloudEvent, event_type: str, data: Any, traceparent: str | None) -> Event[Any]:
    attributes = ce.get_attributes()
    known = {"id", "source", "type", "specversion", "subject", "time", "datacontenttype"}
    return Event(
        id=ce["id"],
        source=ce["source"],
        type=event_type,
        data=data,
        subject=attributes.get("subject"),
        time=attributes.get("time"),
        traceparent=traceparent or objectflow_logging.new_traceparent(),
        extensions={k: v for k, v in attributes.items() if k not in known},
    )


def _reply(name: str, event: Event[Any], reply: Reply) -> flask.Response:
    # A redelivered event produces the same reply id, so the reply dedupes downstream too.
    reply_id = uuid.uuid5(REPLY_NAMESPACE, f"{event.source}\x00{event.id}\x00{reply.type}")
    attributes: dict[str, Any] = {
        "id": str(reply_id),
        "source": f"/objectflow/functions/{name}",
        "type": reply.type,
        "datacontenttype": "application/json",
        "traceparent": event.traceparent,
    }
    if reply.subject or event.subject:
        attributes["subject"] = reply.subject or event.subject
    headers, body = cehttp.encode(CloudEvent(attributes, reply.data.model_dump(mode="json")))
    return flask.Response(body, status=200, headers=headers)


def _done(
    name: str, event_type: str, started: float, outcome: str, response: flask.Response
) -> flask.Response:
    metric_type = event_type if registry.lookup(event_type) is not None else "other"
    EVENTS.labels(name, metric_type, outcome).inc()
    DURATION.labels(name, metric_type).observe(time.perf_counter() - started)
    return response


def _json(status: int, body: Mapping[str, Any]) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    return mime in ("application/json", "text/json") or mime.endswith("+json")


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
