"""The cron ticker: next-fire computation in a time zone (incl. DST), firing by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devstack import wiring
from devstack.runtime import ticker

BERLIN = wiring.Schedule(cron="0 9 * * *", timezone="Europe/Berlin", data={"job": "report"})


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2024, 3, 29, 12), utc(2024, 3, 30, 8)),  # CET: 09:00 local is 08:00 UTC
        (utc(2024, 3, 30, 12), utc(2024, 3, 31, 7)),  # clocks went forward: 07:00 UTC
        (utc(2024, 10, 26, 12), utc(2024, 10, 27, 8)),  # and back again: 08:00 UTC
    ],
)
def test_next_fire_keeps_local_time_across_dst(after: datetime, expected: datetime) -> None:
    due = ticker.next_fire(BERLIN, after)
    assert due == expected
    assert (due.hour, due.minute) == (9, 0)
    assert str(due.tzinfo) == "Europe/Berlin"


def test_next_fire_in_the_skipped_hour_fires_once_after_the_gap() -> None:
    schedule = wiring.Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    first = ticker.next_fire(schedule, utc(2024, 3, 30, 12))  # 02:30 does not exist that night
    assert first == utc(2024, 3, 31, 1)  # 03:00 CEST, the end of the gap
    assert ticker.next_fire(schedule, first) == utc(2024, 4, 1, 0, 30)  # 02:30 CEST again


def test_next_fire_differs_from_utc_in_another_zone() -> None:
    schedule = wiring.Schedule(cron="0 9 * * *", timezone="Asia/Kolkata")  # UTC+05:30
    assert ticker.next_fire(schedule, utc(2025, 1, 1, 0)) == utc(2025, 1, 1, 3, 30)
    in_utc = wiring.Schedule(cron="0 9 * * *")
    assert ticker.next_fire(in_utc, utc(2025, 1, 1, 0)) == utc(2025, 1, 1, 9)


def test_seconds_field_is_accepted_by_the_wiring() -> None:
    schedule = wiring.Schedule(cron="* * * * * */5")
    assert ticker.next_fire(schedule, utc(2025, 1, 1, 0, 0, 1)) == utc(2025, 1, 1, 0, 0, 5)


def test_fire_names_the_unknown_schedule_and_the_declared_ones() -> None:
    values = wiring.Values(schedules={"nightly": BERLIN, "hourly": BERLIN})
    with pytest.raises(ticker.UnknownSchedule, match=r"'nope'.*declared: nightly, hourly"):
        ticker.fire("nope", values, "http://127.0.0.1:9/")
