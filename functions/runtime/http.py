"""The HTTP frame: an HTTP function gets the same frame as a CloudEvent function.

    api = http_function("camera-api")

    @api.get("/captures/{image_id}")
    def capture(image_id: str) -> CaptureStatus: ...

    camera_api = api.target   # the functions-framework target, served with --asgi

`api` is a FastAPI app (routing, validation, multipart, OpenAPI 3.1 at GET /openapi.json, all
from the route's pydantic models). The frame adds what every function serves and does:
- GET /health and GET /metrics;
- a request id per request (`X-Request-Id`, else a new one) on every log line and in the answer;
- one JSON log line (with the request's traceparent) and request metrics per request; the
  request's tracing span is FastAPI's own telemetry's (under the caller's `traceparent`);
- JSON errors for every failure, `{"error": "<kind>", "detail": "...", "field": "..."}`: an
  ObjectflowError with its status (503 with Retry-After), invalid input 422 naming the field,
  unknown paths 404, wrong methods 405, and the unexpected error 500.

functions-framework serves `api.target` (`functions-framework --asgi --target camera_api`); the
target hands each request to the app untouched, so Knative and the local runtime run the same.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from functions.runtime import adapter, settings, tracing
from functions.runtime import logging as objectflow_logging
from functions.runtime.errors import ObjectflowError, PayloadTooLarge
from functions.runtime.metrics import ERRORS, REQUEST_DURATION, REQUESTS

log = logging.getLogger("objectflow.http")
# Scope keys functions-framework's own router set; the app routes the request afresh.
_OUTER_KEYS = ("app", "router", "endpoint", "route", "path_params")


class ErrorBody(BaseModel):
    """Every error answer of every objectflow HTTP function."""

    error: str
    detail: str
    field: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in ("4XX", "5XX", 422)
}


UNTRACED = frozenset({"/health", "/healthz", "/readyz", "/metrics"})  # probes and scrapes
TELEMETRY: TelemetryConfig = {
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "exclude": lambda scope: scope.get("path") in UNTRACED,
}


class HttpFunction(FastAPI):
    """A FastAPI app with objectflow's frame; `target` is what functions-framework serves."""

    def __init__(self, name: str, **fastapi_options: Any) -> None:
        fastapi_options.setdefault("title", name)
        fastapi_options.setdefault("responses", ERROR_RESPONSES)
        # FastAPI's native OpenTelemetry: the request's span (metrics stay Prometheus's)
        fastapi_options.setdefault("telemetry", TELEMETRY)
        super().__init__(openapi_url="/openapi.json", docs_url=None, redoc_url=None,
                         **fastapi_options)  # fmt: skip
        self.name = name
        self.add_exception_handler(ObjectflowError, self._objectflow_error)
        self.add_exception_handler(RequestValidationError, self._invalid_request)
        self.add_exception_handler(HTTPException, self._http_error)
        self.add_middleware(_Frame, name=name)
        for path in ("/health", "/healthz", "/readyz"):
            self.add_api_route(path, self._health, methods=["GET"], include_in_schema=False)
        self.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)

    @property
    def target(self) -> Callable[[Request], Awaitable[Response]]:
        app: ASGIApp = self

        async def serve(_request: Request) -> Response:
            return _Forward(app)

        serve.__name__ = self.name.replace("-", "_")
        return serve

    def _health(self) -> dict[str, str | int]:
        return {"status": "ok", "function": self.name, "pid": os.getpid(), "ts": adapter.now()}

    async def _objectflow_error(self, _request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ObjectflowError)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return error(exc.status, exc.body(), headers)

    async def _invalid_request(self, _request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field(e.get("loc", ())), "error": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "request", "error": "invalid"}
        body = {
            "error": "invalid-request",
            "detail": f"{first['field']}: {first['error']}",
            "field": first["field"],
            "errors": errors,
        }
        return error(422, body)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            detail = f"no {request.method} {request.url.path}"
            return error(404, {"error": "not-found", "detail": detail})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            # Starlette's Allow names only the first route matching the path; list them all.
            allowed = sorted({method for route in self.routes
                              if (regex := getattr(route, "path_regex", None)) is not None
                              and regex.match(request.url.path)
                              for method in getattr(route, "methods", None) or ()})  # fmt: skip
            headers = (
                {**(exc.headers or {}), "Allow": ", ".join(allowed)} if allowed else exc.headers
            )
            return error(405, {"error": "method-not-allowed", "detail": detail}, headers)
        kind = "bad-request" if exc.status_code == 400 else f"http-{exc.status_code}"
        return error(exc.status_code, {"error": kind, "detail": str(exc.detail)}, exc.headers)


def http_function(name: str, **fastapi_options: Any) -> HttpFunction:
    """The app of HTTP function `name` (see the module docstring)."""
    return HttpFunction(name, **fastapi_options)


def error(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(dict(body), status_code=status, headers=dict(headers or {}))


async def read_cloudevent(request: Request) -> Any:
    """A binary or structured CloudEvent from `request`, read within the event size limit."""
    limit = settings.runtime().max_event_bytes
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    return adapter.decode_cloudevent(dict(request.headers), bytes(body))


def _field(loc: Any) -> str:
    """("path", "image_id") -> "image_id"; ("body", "items", 0) -> "items.0"."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("path", "query", "header", "body", "cookie") and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "request"


def _metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class _Forward(Response):
    """functions-framework's answer for every request: let the app handle it, untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = {k: v for k, v in scope.items() if k not in _OUTER_KEYS}
        await self.app(inner, receive, send)


class _Frame:
    """Request id, log line, metrics, and the JSON 500 for an unexpected error."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app, self.name = app, name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        objectflow_logging.configure(self.name)
        tracing.configure(self.name)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
        started, status = time.perf_counter(), 500
        responded = False

        async def send_framed(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [
                    *message.get("headers", []), (b"x-request-id", request_id.encode())
                ]  # fmt: skip
            await send(message)

        # FastAPI's own telemetry has opened the request's span under the caller's traceparent
        trace = tracing.traceparent(new=False)
        with objectflow_logging.event_context(request_id=request_id, traceparent=trace):
            try:
                await self.app(scope, receive, send_framed)
            except Exception:
                log.exception("request failed with an unexpected error")
                if responded:
                    raise
                body = {"error": "internal", "detail": f"unexpected error (request {request_id})"}
                await error(500, body)(scope, receive, send_framed)
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            REQUESTS.labels(self.name, template, scope["method"], str(status)).inc()
            REQUEST_DURATION.labels(self.name, template, scope["method"]).observe(elapsed)
            if status >= 400:
                ERRORS.labels(self.name, f"http-{status}").inc()
            log.info(
                "request handled",
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "route": template, "duration_ms": round(elapsed * 1000, 2)},
            )  # fmt: skip
