"""The OTA demo's PDF step finds ota-reports as it finds ota-api (the wiring's ports), and says
clearly what is missing while the function is not declared."""

from __future__ import annotations

import io

from rich.console import Console

from devstack.ota import demo


def test_the_report_url_comes_from_the_wiring_ports() -> None:
    assert demo.reports_url({"ota-api": 18246, "ota-reports": 18300}) == "http://127.0.0.1:18300"


def test_an_undeclared_ota_reports_fails_the_step_with_its_name() -> None:
    out = io.StringIO()
    assert (
        demo.rollout_pdf({"ota-api": 18246}, "some-rollout", Console(file=out, width=300)) is False
    )
    said = out.getvalue()
    assert "function ota-reports is not declared in charts/objectflow/values.yaml" in said
    assert "/reports/rollouts/<id>.pdf" in said
