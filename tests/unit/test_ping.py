"""Ping ticks (functions.sources.ping): the PingSource event and what a CronJob run fires."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from functions.sources import ping

DATA = {"job": "report"}


def utc(hour: int, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(2024, 3, 31, hour, minute, sec, tzinfo=UTC)


def test_ping_event_is_what_a_pingsource_sends() -> None:
    at = datetime(2024, 3, 31, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    event = ping.ping_event("objectflow", "daily-report", DATA, at)
    assert event["type"] == "dev.knative.sources.ping"
    assert event["source"] == "/apis/v1/namespaces/objectflow/pingsources/daily-report"
    assert event["time"] == "2024-03-31T07:00:00+00:00"
    assert event["datacontenttype"] == "application/json"
    assert event.data == DATA


def test_ping_event_id_is_stable_per_schedule_and_time() -> None:
    def event_id(name: str, moment: datetime) -> str:
        return str(ping.ping_event("objectflow", name, DATA, moment)["id"])

    at = utc(7)
    assert event_id("a", at) == event_id("a", at.astimezone(ZoneInfo("Europe/Berlin")))
    assert event_id("a", at) != event_id("b", at)
    assert event_id("a", at) != event_id("a", utc(8))


@pytest.mark.parametrize("started", [utc(7, 0, 3), utc(7, 0, 59)])
def test_a_five_field_cron_fires_its_minute_once_however_late_the_job_starts(
    started: datetime,
) -> None:
    assert ping.due_in_minute("0 * * * *", "Europe/Berlin", started) == [utc(7)]


def test_a_seconds_cron_fires_every_matching_second_of_the_minute() -> None:
    due = ping.due_in_minute("* * * * * */15", "Asia/Kolkata", utc(7, 0, 4))
    assert due == [utc(7, 0, s) for s in (0, 15, 30, 45)]


def test_without_a_sink_it_exits_naming_k_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K_SINK", raising=False)
    with pytest.raises(SystemExit) as exited:
        ping.main(["--name", "n", "--namespace", "objectflow", "--cron", "* * * * *"])
    assert exited.value.code == 2
