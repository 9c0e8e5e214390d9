"""Prometheus metrics shared by every function (one process serves one function)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "objectflow_events_total",
    "CloudEvents handled, by outcome (ok, duplicate, rejected, retryable, error).",
    ["function", "type", "outcome"],
)
ERRORS = Counter(
    "objectflow_errors_total",
    "Events that did not succeed, by error kind (the `error` field of the response body).",
    ["function", "kind"],
)
DURATION = Histogram(
    "objectflow_event_duration_seconds",
    "Time from request to response, per function and event type.",
    ["function", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUESTS = Counter(
    "objectflow_http_requests_total",
    "HTTP requests an HTTP function answered, by route template, method and status.",
    ["function", "route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "objectflow_http_request_duration_seconds",
    "Time from request to response of an HTTP function, per route template and method.",
    ["function", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
