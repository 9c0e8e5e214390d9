"""OpenTelemetry tracing across every hop, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

Each process names itself once (`configure("camera-ingest")`); then `span(...)` opens a span
whose parent is the W3C `traceparent` it is given (a CloudEvent's extension, an HTTP, Kafka,
RabbitMQ or MQTT 5 header), and `traceparent()` is what to send on, so the next hop continues
the trace. Spans go to the OTLP/HTTP endpoint in batches (the SDK's exporter reads the standard
`OTEL_*` variables: endpoint, headers, `OTEL_BSP_SCHEDULE_DELAY`).

Off, the API's no-op tracer still carries the incoming context, so `traceparent()` hands on the
one received and logs keep naming it; nothing is recorded or sent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from functions.runtime import logging as objectflow_logging

_PROPAGATOR = TraceContextTextMapPropagator()
_configured: str | None = None
_configuring = threading.Lock()
Kind = SpanKind


def configure(service: str) -> None:
    """Export this process's spans as `service`, if an endpoint is set; once per process (a
    forked child configures its own: the exporter's thread does not survive a fork)."""
    if _configured is not None or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    with _configuring:  # a threaded server's first requests may arrive together
        _configure(service)


def _configure(service: str) -> None:
    global _configured
    if _configured is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = service


def enabled() -> bool:
    """Whether this process records spans (for hot paths that skip even the no-op work)."""
    return _configured is not None


def in_trace() -> bool:
    """Whether a span (of an invocation, a request, a message) is current."""
    return trace.get_current_span().get_span_context().is_valid


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span under `parent` (a traceparent; None: under the current span, or a new trace)."""
    context = _PROPAGATOR.extract({"traceparent": parent}) if parent else None
    tracer = trace.get_tracer("objectflow")
    with tracer.start_as_current_span(name, context=context, kind=kind) as current:
        for key, value in (attributes or {}).items():
            if value is not None:
                current.set_attribute(key, value)
        yield current


def traceparent(*, new: bool = True) -> str | None:
    """The current span as a W3C traceparent, to send on; with no current span a new one (or
    None when `new` is false)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    found = carrier.get("traceparent")
    if found is None and new:
        return objectflow_logging.new_traceparent()
    return found
