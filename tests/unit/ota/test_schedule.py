"""Due times: schedule_time, cron in a zone across DST changes (fixed clocks), or now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.ota.schedule import next_occurrence, resolve, zone
from functions.runtime.errors import InvalidData

BERLIN = zone("Europe/Berlin")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "now", "due"),
    [
        # an ordinary day: 03:30 CET is 02:30 UTC
        ("30 3 * * *", utc(2025, 3, 1, 12), utc(2025, 3, 2, 2, 30)),
        # the day clocks go forward (30 March 2025, 02:00 CET -> 03:00 CEST): 03:30 CEST
        ("30 3 * * *", utc(2025, 3, 29, 12), utc(2025, 3, 30, 1, 30)),
        # 02:30 does not exist that night: it fires when the clock jumps, 03:00 CEST
        ("30 2 * * *", utc(2025, 3, 29, 12), utc(2025, 3, 30, 1, 0)),
        # and is back to 02:30 CEST the day after
        ("30 2 * * *", utc(2025, 3, 30, 2), utc(2025, 3, 31, 0, 30)),
        # clocks go back (26 October 2025, 03:00 CEST -> 02:00 CET): 02:30 happens twice,
        # it fires once, at the first (CEST)
        ("30 2 * * *", utc(2025, 10, 25, 12), utc(2025, 10, 26, 0, 30)),
        # ... and the second 02:30 (CET, an hour later) is not a new occurrence
        ("30 2 * * *", utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)),
        # after the change: 09:00 CET is 08:00 UTC
        ("0 9 * * *", utc(2025, 10, 26, 6), utc(2025, 10, 26, 8, 0)),
    ],
)
def test_cron_in_berlin_across_dst(cron: str, now: datetime, due: datetime) -> None:
    assert next_occurrence(cron, BERLIN, now) == due


def test_next_occurrence_is_strictly_after_now() -> None:
    now = utc(2025, 6, 1, 7, 0)  # 09:00 CEST exactly
    assert next_occurrence("0 9 * * *", BERLIN, now) == utc(2025, 6, 2, 7, 0)


def resolved(**given: object) -> object:
    options: dict[str, object] = {
        "schedule_time": None,
        "cron": None,
        "timezone": None,
        "device_timezone": "Asia/Bangkok",
        "now": utc(2025, 1, 1),
        "past_tolerance_s": 300,
    }
    return resolve(**(options | given))  # type: ignore[arg-type]


def test_the_schedule_kinds() -> None:
    assert resolved().kind == "now"  # type: ignore[attr-defined]
    at = resolved(schedule_time=utc(2025, 1, 2))
    assert (at.kind, at.due_at) == ("at", utc(2025, 1, 2))  # type: ignore[attr-defined]
    cron = resolved(cron="0 8 * * *")  # the device's zone: 08:00 in Bangkok is 01:00 UTC
    assert (cron.timezone, cron.due_at) == ("Asia/Bangkok", utc(2025, 1, 1, 1))  # type: ignore[attr-defined]
    slightly_late = resolved(schedule_time=utc(2025, 1, 1) - timedelta(seconds=30))
    assert slightly_late.due_at == utc(2025, 1, 1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"cron": "0 8 * * *", "schedule_time": utc(2025, 1, 2)}, "cron"),
        ({"cron": "not a cron"}, "cron"),
        ({"cron": "0 8 * * * *"}, "cron"),
        ({"cron": "0 8 * * *", "timezone": "Atlantis/Capital"}, "timezone"),
        ({"schedule_time": utc(2024, 12, 31)}, "schedule_time"),
        ({"timezone": "UTC"}, "timezone"),
    ],
)
def test_bad_schedules_name_their_field(given: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidData) as caught:
        resolved(**given)
    assert caught.value.field == field
