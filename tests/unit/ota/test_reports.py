"""ota-reports without services: CSV lines (RFC 4180), query dates, the summary's arithmetic,
the dashboard's progress bars, and the rollout PDF (poppler reads and renders it)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from functions.ota import dashboard, report_pdf, reports
from functions.ota.reporting import _day, _moment
from functions.runtime import InvalidData
from tests.ota_reports_support import pdf_png, pdf_text

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)


def test_a_csv_line_quotes_as_rfc_4180_says_and_ends_in_crlf() -> None:
    row = ("j1", "dev,1", "fw", None, "error", T0, T0 + timedelta(seconds=5),
           T0 + timedelta(seconds=12.5), 'model "x"', 2, "sha256\nmismatch")  # fmt: skip
    line = reports.csv_line(row)
    assert line.endswith("\r\n")
    assert line.startswith('j1,"dev,1",fw,,error,2026-03-08T06:00:00Z,')
    [parsed] = list(csv.reader(io.StringIO(reports.header_line() + line, newline="")))[1:]
    assert dict(zip(reports.CSV_COLUMNS, parsed, strict=True)) == {
        "job_id": "j1", "device_id": "dev,1", "firmware_version": "fw", "rollout_id": "",
        "status": "error", "created_at": "2026-03-08T06:00:00Z",
        "dispatched_at": "2026-03-08T06:00:05Z", "finished_at": "2026-03-08T06:00:12.500000Z",
        "duration_s": "7.5", "model": 'model "x"', "retries": "2",
        "status_reason": "sha256\nmismatch",
    }  # fmt: skip


def test_a_job_not_dispatched_has_no_duration() -> None:
    line = reports.csv_line(("j", "d", "fw", "r", "scheduled", T0, None, None, "m", 0, None))
    assert line == "j,d,fw,r,scheduled,2026-03-08T06:00:00Z,,,,m,0,\r\n"


def test_the_header_names_the_contracts_columns_first() -> None:
    assert reports.header_line().split(",")[:9] == [
        "job_id", "device_id", "firmware_version", "rollout_id", "status", "created_at",
        "dispatched_at", "finished_at", "duration_s"]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-03-08", datetime(2026, 3, 8, tzinfo=UTC)),
        ("2026-03-08T01:30:00", datetime(2026, 3, 8, 1, 30, tzinfo=UTC)),
        ("2026-03-08T01:30:00-05:00", datetime(2026, 3, 8, 6, 30, tzinfo=UTC)),
    ],
)
def test_query_dates_are_utc_unless_they_say_otherwise(given: str, expected: datetime) -> None:
    assert _moment(given, "from") == expected


@pytest.mark.parametrize("given", ["yesterday", "2026-13-01", "2026-02-30", ""])
def test_a_bad_date_names_its_field(given: str) -> None:
    with pytest.raises(InvalidData) as caught:
        _moment(given, "to")
    assert caught.value.field == "to" and caught.value.status == 422


def test_the_summary_counts_whole_days() -> None:
    assert _day("2026-03-08", "from") == date(2026, 3, 8)
    with pytest.raises(InvalidData) as caught:
        _day("2026-03-08T10:00:00Z", "from")
    assert caught.value.field == "from"


def test_summary_figures_are_means_of_the_timed_jobs() -> None:
    counts = {"succeeded": 3, "failed": 1, "timed_out": 0, "_timed": 2, "_sum": 30.0,
              "max_duration_s": 20.0}  # fmt: skip
    assert reports._shown(counts) == {
        "finished": 4, "succeeded": 3, "failed": 1, "timed_out": 0, "success_percent": 75.0,
        "mean_duration_s": 15.0, "max_duration_s": 20.0}  # fmt: skip
    assert reports._shown(reports._zero())["success_percent"] is None


def rollout(**counts: int) -> dict[str, Any]:
    base = dict.fromkeys(("pending", "scheduled", "ready", "dispatched", "downloading",
                          "flashing", "done", "error", "timed_out", "cancelled"), 0)  # fmt: skip
    wave2 = base | counts
    return {
        "id": "5f0c3c2e-0000-4000-8000-000000000001", "status": "paused",
        "reason": "wave 2: 4 of 9 finished failed", "version": 7,
        "firmware_version": "fw-9.9.9", "current_wave": 2, "device_count": 40,
        "success_threshold": 95, "abort": {"failure_percent": 20, "min_finished": 3},
        "created_at": "2026-03-08T06:00:00Z",
        "waves": [
            {"percent": 10, "devices": [f"d{i}" for i in range(4)], "status": "done",
             "counts": base | {"done": 4}},
            {"percent": 100, "devices": [f"d{i}" for i in range(4, 40)], "status": "paused",
             "counts": wave2},
        ],
        "counts": {k: base[k] + wave2[k] + (4 if k == "done" else 0) for k in base},
    }  # fmt: skip


def test_a_waves_bar_splits_its_devices_by_outcome() -> None:
    bars = dashboard.progress(rollout(done=20, error=3, timed_out=2, flashing=1, pending=10))
    assert [(b["n"], b["size"], b["done"], b["failed"], b["finished"]) for b in bars] == [
        (1, 4, 4, 0, 4), (2, 36, 20, 5, 25)]  # fmt: skip
    assert bars[1]["in_flight"] == 1 and bars[1]["pending"] == 10


def test_the_pdf_opens_and_holds_the_rollouts_counts(tmp_path: Path) -> None:
    shown = rollout(done=20, error=3, timed_out=2, pending=11)
    finished = [(T0 + timedelta(seconds=10 * i), "done" if i % 5 else "error") for i in range(30)]
    report = {"rollout": shown, "finished": finished,
              "timeline": [{"at": T0, "type": "rollout.created", "status": "running", "wave": 1,
                            "reason": None},
                           {"at": T0 + timedelta(minutes=4), "type": "rollout.paused",
                            "status": "paused", "wave": 2, "reason": shown["reason"]}],
              "durations": {"timed": 25, "mean_s": 4.25, "max_s": 9.0}}  # fmt: skip
    pdf = report_pdf.render(report)
    assert pdf.startswith(b"%PDF-")
    assert pdf_png(pdf, tmp_path).startswith(b"\x89PNG")
    text = pdf_text(pdf, tmp_path)
    assert "fw-9.9.9" in text and shown["id"] in text and "wave 2: 4 of 9" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    # the summary (done 4 + 20), then wave 2's row: percent, devices, status, done ... pending
    assert "done 24" in lines and "error 3" in lines and "timed_out 2" in lines
    assert "2 100% 36 paused 20 3 2 0 11 0" in lines
    assert "Final statuses over time" in text and "rollout.paused" in text


def test_a_pdf_of_a_rollout_with_nothing_finished_says_so(tmp_path: Path) -> None:
    report = {"rollout": rollout(pending=36), "finished": [], "timeline": [],
              "durations": {"timed": 0, "mean_s": None, "max_s": None}}  # fmt: skip
    assert "No job has finished yet." in pdf_text(report_pdf.render(report), tmp_path)


def test_the_dashboard_calls_the_local_runtimes_ota_api_and_the_docs_name_its_port() -> None:
    from devstack import wiring

    values = wiring.load()
    env = values.functions["ota-reports"].env
    assert env["OTA_REPORTS_API_URL"] == f"http://127.0.0.1:{values.ports()['ota-api']}"
    doc = (wiring.ROOT / "docs" / "ota.md").read_text()
    assert f"REPORTS=http://127.0.0.1:{values.ports()['ota-reports']}\n" in doc
