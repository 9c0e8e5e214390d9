"""Tracing in one process, with the SDK's in-memory exporter, against the real services: a
function's span continues the incoming traceparent and its calls are children of it; S3
objects and MQTT commands carry the span that wrote them (the e2e tests in
tests/e2e/*/test_tracing.py follow whole pipelines across processes)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from functions.runtime import clients, settings, tracing
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> Iterator[None]:
    """The process's tracer provider keeps spans in memory (a provider is set once per
    process: later tests record into an exporter that has stopped keeping them)."""
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(made)
    yield
    EXPORTER.shutdown()


@pytest.fixture
def spans(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    settings.reset()
    clients.reset()
    monkeypatch.setattr(tracing, "_configured", "tests")  # as configure() does with an endpoint
    EXPORTER.clear()
    yield EXPORTER.get_finished_spans
    clients.reset()


def parts(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def named(found: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in found if s.name == name]
    return span


def test_a_function_continues_the_events_trace_and_its_calls_are_its_children(spans: Any) -> None:
    app = functions_framework.create_app(
        "echo", str(ROOT / "functions" / "echo" / "function.py"), "http"
    ).test_client()
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    event = CloudEvent(
        {"type": "objectflow.echo.requested.v1", "source": "/tests/tracing",
         "id": str(uuid.uuid4()), "traceparent": f"00-{trace_id}-{caller}-01"},
        {"message": "traced"},
    )  # fmt: skip
    headers, body = to_binary(event)
    response = app.post("/", headers=headers, data=body)
    assert response.status_code == 200, response.text
    found = spans()
    server = named(found, "echo objectflow.echo.requested.v1")
    assert server.kind == trace.SpanKind.SERVER
    assert (
        ids(server)[0] == trace_id and server.parent and f"{server.parent.span_id:016x}" == caller
    )
    redis_span = named(found, "redis")
    assert redis_span.kind == trace.SpanKind.CLIENT
    assert redis_span.parent and redis_span.parent.span_id == server.get_span_context().span_id
    # the reply goes on under the function's span
    assert parts(response.headers["ce-traceparent"]) == ids(server)


def test_an_object_written_in_a_trace_names_the_span_that_wrote_it(
    spans: Any, service_env: dict[str, str]
) -> None:
    bucket, key = service_env["MINIO_RAW_BUCKET"], f"tests/tracing/{uuid.uuid4().hex}"
    with tracing.span("write"):
        clients.s3.call(lambda s3: s3.put_object(Bucket=bucket, Key=key, Body=b"x"))
    head = clients.s3.call(lambda s3: s3.head_object(Bucket=bucket, Key=key))
    clients.s3.call(lambda s3: s3.delete_object(Bucket=bucket, Key=key))
    put = named(spans(), "s3")  # head and delete ran outside a trace: no spans
    assert parts(head["Metadata"]["traceparent"]) == ids(put)


def test_an_mqtt_publish_carries_its_span_as_a_user_property(spans: Any) -> None:
    topic = f"tests/tracing/{uuid.uuid4().hex}"
    got: list[str | None] = []
    arrived = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        got.append(clients.mqtt.traceparent(message))
        arrived.set()

    subscriber = clients.mqtt.connect(on_message=on_message)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    try:
        publisher = clients.mqtt.Publisher(clients.mqtt.connect())
        with tracing.span("command"):
            publisher.publish(topic, b"{}")
        wait_for(arrived.is_set, timeout=10, what="the message")
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
    mqtt_span = named(spans(), "mqtt")
    assert got[0] is not None and parts(got[0]) == ids(mqtt_span)


def test_off_the_incoming_trace_is_handed_on_unchanged() -> None:
    """Without an endpoint (its own process: this one has a provider) nothing is recorded,
    and what a hop sends on is the traceparent it received."""
    incoming = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    script = textwrap.dedent(
        """
        import sys
        from functions.runtime import tracing
        tracing.configure("off")
        assert not tracing.enabled()
        with tracing.span("hop", parent=sys.argv[1]):
            print(tracing.traceparent())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script, incoming], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)  # fmt: skip
    assert done.stdout.strip() == incoming
