"""The CloudEvent adapter's whole error mapping, through functions-framework's own app."""

from __future__ import annotations

import json
from pathlib import Path

import functions_framework
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient

from functions.runtime import logging as objectflow_logging
from functions.runtime import settings

SOURCE = str(Path(__file__).with_name("probe_functions.py"))
TYPE = "objectflow.echo.requested.v1"


@pytest.fixture
def client() -> FlaskClient:
    settings.reset()
    app = functions_framework.create_app(target="probe", source=SOURCE, signature_type="http")
    return app.test_client()


def event(data: object = None, **attributes: str) -> CloudEvent:
    attrs = {"type": TYPE, "source": "/tests/adapter", "id": "evt-1", "subject": "cam-7"}
    attrs.update(attributes)
    return CloudEvent(attrs, {"message": "hello"} if data is None else data)


def post_binary(client: FlaskClient, ce: CloudEvent):
    headers, body = to_binary(ce)
    return client.post("/", headers=headers, data=body)


def test_binary_event_gets_a_reply_cloudevent(client: FlaskClient) -> None:
    response = post_binary(client, event(traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    assert response.status_code == 200
    assert response.headers["ce-type"] == "objectflow.echo.replied.v1"
    assert response.headers["ce-source"] == "/objectflow/functions/adapter-probe"
    assert response.headers["ce-subject"] == "cam-7"
    assert response.headers["ce-traceparent"].startswith("00-" + "a" * 32)
    assert response.get_json() == {"message": "hello", "received": 1}


def test_reply_id_is_stable_across_redeliveries(client: FlaskClient) -> None:
    first = post_binary(client, event()).headers["ce-id"]
    again = post_binary(client, event()).headers["ce-id"]
    other = post_binary(client, event(id="evt-2")).headers["ce-id"]
    assert first == again != other


def test_structured_event_is_accepted(client: FlaskClient) -> None:
    headers, body = to_structured(event())
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 200
    assert response.get_json()["message"] == "hello"


def test_success_without_reply_is_204(client: FlaskClient) -> None:
    assert post_binary(client, event({"message": "no-reply"})).status_code == 204


@pytest.mark.parametrize(
    ("headers", "body", "detail"),
    [
        ({"content-type": "application/json"}, b'{"message": "hi"}', "specversion"),
        (
            {"ce-specversion": "1.0", "ce-type": TYPE, "ce-source": "/t"},  # no ce-id
            b'{"message": "hi"}',
            "id",
        ),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "not a valid CloudEvent"),
    ],
    ids=["plain-json-not-cloudevent", "missing-id", "structured-invalid-json"],
)
def test_malformed_cloudevent_is_400(
    client: FlaskClient, headers: dict[str, str], body: bytes, detail: str
) -> None:
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad-event"
    assert detail in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "message"),
        ({"message": 42}, "message"),
        ({"message": ""}, "message"),
        ({"message": "hi", "extra": 1}, "extra"),
        (["not", "an", "object"], "data"),
    ],
    ids=["missing", "wrong-type", "too-short", "unknown-field", "not-an-object"],
)
def test_wrong_data_shape_is_422_naming_the_field(
    client: FlaskClient, data: object, field: str
) -> None:
    response = post_binary(client, event(data))
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "invalid-data"
    assert body["field"] == field
    assert body["event_id"] == "evt-1"


def test_data_that_is_not_json_is_400(client: FlaskClient) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": TYPE,
        "ce-source": "/t",
        "ce-id": "x",
        "content-type": "application/json",
    }
    response = client.post("/", headers=headers, data=b"{oops")
    assert response.status_code == 400
    assert response.get_json()["field"] == "data"


def test_unsupported_content_type_is_415(client: FlaskClient) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": TYPE,
        "ce-source": "/t",
        "ce-id": "x",
        "content-type": "text/plain",
    }
    response = client.post("/", headers=headers, data=b"hello")
    assert response.status_code == 415
    assert response.get_json()["field"] == "datacontenttype"


def test_batched_cloudevents_are_415(client: FlaskClient) -> None:
    response = client.post(
        "/", headers={"content-type": "application/cloudevents-batch+json"}, data=b"[]"
    )
    assert response.status_code == 415


def test_oversize_payload_is_413_before_parsing(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBJECTFLOW_MAX_EVENT_BYTES", "512")
    settings.reset()
    response = post_binary(client, event({"message": "x" * 600}))
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload-too-large"


def test_event_type_not_handled_is_400(client: FlaskClient) -> None:
    response = post_binary(client, event(type="objectflow.echo.replied.v1"))
    assert response.status_code == 400
    assert response.get_json()["field"] == "type"


def test_domain_rule_violation_is_422(client: FlaskClient) -> None:
    response = post_binary(client, event({"message": "domain-rule"}))
    assert response.status_code == 422
    assert response.get_json()["field"] == "message"


def test_dependency_outage_is_503_with_retry_after(client: FlaskClient) -> None:
    response = post_binary(client, event({"message": "dependency-down"}))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["dependency"] == "redis"


def test_unexpected_error_is_500_without_internals(client: FlaskClient) -> None:
    response = post_binary(client, event({"message": "crash"}))
    assert response.status_code == 500
    assert "secret internals" not in response.get_data(as_text=True)


def test_health_and_metrics(client: FlaskClient) -> None:
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["ts"].endswith("Z")
    post_binary(client, event())
    post_binary(client, event({}))
    metrics = client.get("/metrics").get_data(as_text=True)
    ok = f'objectflow_events_total{{function="adapter-probe",outcome="ok",type="{TYPE}"}}'
    assert ok in metrics
    assert 'objectflow_errors_total{function="adapter-probe",kind="invalid-data"}' in metrics
    assert "objectflow_event_duration_seconds_bucket" in metrics


def test_logs_are_json_lines_with_event_context(
    client: FlaskClient, capfd: pytest.CaptureFixture[str]
) -> None:
    objectflow_logging.configure.cache_clear()
    traceparent = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    post_binary(client, event(id="evt-log", traceparent=traceparent))
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    handled = next(line for line in lines if line["message"] == "event handled")
    assert handled["function"] == "adapter-probe"
    assert handled["event_id"] == "evt-log"
    assert handled["event_type"] == TYPE
    assert handled["event_source"] == "/tests/adapter"
    assert handled["event_subject"] == "cam-7"
    # the function's span of the event's trace (the span id is the event's when tracing is off)
    assert handled["traceparent"].split("-")[1] == traceparent.split("-")[1]


def test_non_ascii_attributes_survive_http(client: FlaskClient) -> None:
    from functions.runtime import cehttp

    headers, body = cehttp.encode(event(subject="thermo-raw/dir/with space ünï.jpg"))
    assert all(value.isascii() for value in headers.values())
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 200
    decoded = cehttp.decode(dict(response.headers), response.get_data())
    assert decoded["subject"] == "thermo-raw/dir/with space ünï.jpg"
