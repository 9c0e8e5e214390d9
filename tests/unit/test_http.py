"""The HTTP frame (functions.runtime.http) through functions-framework's ASGI app."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from functions.runtime import settings
from tests.support import http_app

SOURCE = Path(__file__).with_name("probe_http.py")


@pytest.fixture
def client() -> TestClient:
    settings.reset()
    return http_app(SOURCE, "probe_api")


def test_routes_answer_their_models(client: TestClient) -> None:
    assert client.get("/items/7").json() == {"name": "item-7", "count": 7}
    created = client.post("/items", json={"name": "a", "count": 1})
    assert (created.status_code, created.json()) == (201, {"name": "a", "count": 1})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind", "field"),
    [
        ("GET", "/items/0", None, 404, "not-found", "item_id"),
        ("GET", "/items/abc", None, 422, "invalid-request", "item_id"),
        ("POST", "/items", {"name": "", "count": 1}, 422, "invalid-request", "name"),
        ("POST", "/items", {"name": "a"}, 422, "invalid-request", "count"),
        ("GET", "/nothing-here", None, 404, "not-found", None),
        ("DELETE", "/items/7", None, 405, "method-not-allowed", None),
        ("GET", "/items/503", None, 503, "dependency-unavailable", None),
        ("GET", "/items/500", None, 500, "internal", None),
    ],
)
def test_every_failure_is_a_json_error(
    client: TestClient,
    method: str,
    path: str,
    body: object,
    status: int,
    kind: str,
    field: str | None,
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["error"] == kind and answer["detail"]
    assert answer.get("field") == field
    assert "secret internals" not in response.text


def test_dependency_outage_asks_to_retry(client: TestClient) -> None:
    assert client.get("/items/503").headers["retry-after"] == "1"


def test_request_id_is_kept_or_made(client: TestClient) -> None:
    assert client.get("/items/1", headers={"X-Request-Id": "req-42"}).headers["x-request-id"] == (
        "req-42"
    )
    assert len(client.get("/items/1").headers["x-request-id"]) == 32


def test_health_metrics_and_openapi(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["function"] == "http-probe" and health["ts"]
    client.get("/items/3")
    metrics = client.get("/metrics").text
    assert (
        'objectflow_http_requests_total{function="http-probe",method="GET",'
        'route="/items/{item_id}",status="200"}'
    ) in metrics
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/items/{item_id}", "/items"}
    error = document["paths"]["/items"]["post"]["responses"]["422"]
    assert error["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
