"""The status path's pure parts: which records are refused, and what a status does to a job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.ota import statuses

GOOD = {"job_id": "j", "message_id": "m", "status": "flashing", "ts": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"\xff not json", "d", "not-json"),
        (json.dumps(GOOD).encode(), None, "no-device"),
        ([GOOD], "d", "invalid"),
        ({**GOOD, "ts": "yesterday"}, "d", "invalid"),
        ({**GOOD, "progress": 101}, "d", "invalid"),
        ({**GOOD, "extra": 1}, "d", "invalid"),
        ({**GOOD, "status": "rebooting"}, "d", "unknown-status"),
    ],
)
def test_records_that_are_no_status_are_refused_with_their_reason(
    value: Any, key: str | None, reason: str
) -> None:
    with pytest.raises(statuses.Refused) as refused:
        statuses.parse(value, key)
    assert refused.value.reason == reason


def test_a_status_parses_from_json_bytes_or_a_decoded_value() -> None:
    assert statuses.parse(json.dumps(GOOD).encode(), "d") == statuses.parse(GOOD, "d")
    assert statuses.dedup_key(statuses.parse(GOOD, "d")) == "ota:status:j:m:flashing"


@pytest.mark.parametrize(
    ("job_status", "status", "outcome"),
    [
        ("dispatched", "downloading", "applied"),
        ("dispatched", "done", "applied"),  # downloading and flashing lost: still forward
        ("downloading", "flashing", "applied"),
        ("flashing", "error", "applied"),
        ("downloading", "downloading", "repeated"),
        ("flashing", "downloading", "late"),
        ("done", "flashing", "late"),
        ("timed_out", "done", "late"),
        ("cancelled", "downloading", "late"),
        ("done", "error", "impossible"),
        ("error", "done", "impossible"),
        ("ready", "downloading", "impossible"),
        ("scheduled", "error", "impossible"),
    ],
)
def test_a_status_only_moves_a_job_forward(job_status: str, status: str, outcome: str) -> None:
    assert statuses.classify(job_status, status) == outcome
