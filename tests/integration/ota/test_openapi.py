"""schemathesis holds ota-api to its own /openapi.json: for generated requests (valid and
invalid), no 5xx, and every answer matches the document (status, content type, schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import http_app

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = 12  # per operation and mode: bounded, so make test stays fast
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def ota_schema(ota_env: dict[str, str]) -> Any:
    from functions.ota.api import api

    return schemathesis.openapi.from_asgi("/openapi.json", api)


def test_the_document_is_generated_from_the_models(ota_env: dict[str, str]) -> None:
    with http_app(ROOT / "functions" / "ota" / "api.py", "ota_api") as client:
        document = client.get("/openapi.json").json()
    assert {"/firmwares/{version}", "/devices/{device_id}", "/jobs", "/jobs/{job_id}",
            "/jobs/{job_id}/cancel", "/rollouts", "/rollouts/{rollout_id}",
            "/rollouts/{rollout_id}/pause", "/rollouts/{rollout_id}/resume",
            "/rollouts/{rollout_id}/cancel"} <= set(document["paths"])  # fmt: off
    assert document["openapi"].startswith("3.1")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_5xx_or_an_undocumented_answer(ota_schema: Any, mode: Any) -> None:
    tested = set()
    for result in ota_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid (GET /firmwares takes no input)
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        tested.add(operation.label)
    assert len(tested) >= 8
    # the rollout routes are among them (GET and resume take nothing that can be made invalid)
    with_body = {"POST /rollouts", "POST /rollouts/{rollout_id}/pause",
                 "POST /rollouts/{rollout_id}/cancel"}  # fmt: skip
    without = {"GET /rollouts/{rollout_id}", "POST /rollouts/{rollout_id}/resume"}
    assert with_body | (without if mode is GenerationMode.POSITIVE else set()) <= tested
