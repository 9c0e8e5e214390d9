"""schemathesis holds ota-reports to its own /openapi.json, as test_openapi.py does ota-api:
for generated requests (valid and invalid), no 5xx and every answer as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from functions.ota import reports
from tests.integration.ota.test_openapi import CHECKS, EXAMPLES
from tests.support import http_app

ROOT = Path(__file__).resolve().parents[3]
ROUTES = {"GET /reports/jobs.csv", "GET /reports/rollouts/{rollout_id}.pdf", "GET /reports/summary"}


@pytest.fixture
def reports_schema(ota_env: dict[str, str]) -> Any:
    from functions.ota.reporting import api

    reports.reset()
    return schemathesis.openapi.from_asgi("/openapi.json", api)


def test_the_document_lists_the_report_routes(ota_env: dict[str, str]) -> None:
    with http_app(ROOT / "functions" / "ota" / "reporting.py", "ota_reports") as client:
        document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/reports/jobs.csv", "/reports/rollouts/{rollout_id}.pdf", "/reports/summary"} == set(
        document["paths"]
    )
    csv = document["paths"]["/reports/jobs.csv"]["get"]
    assert {p["name"] for p in csv["parameters"]} >= {"from", "to", "firmware", "status"}


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE])  # fmt: skip
def test_no_request_gets_a_5xx_or_an_undocumented_answer(reports_schema: Any, mode: Any) -> None:
    tested = set()
    for result in reports_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # a rollout id is any text: nothing to make invalid
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            continue
        tested.add(operation.label)
    pdf = {"GET /reports/rollouts/{rollout_id}.pdf"}
    assert tested == (ROUTES if mode is schemathesis.GenerationMode.POSITIVE else ROUTES - pdf)
