"""Ping ticks (functions.sources.ping): the PingSource event and what a CronJob run fires."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from functions.sources import ping

DATA = {"job": "report"}


def utc(hour: int, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(2024, 3, 31, hour, minute, sec, tzinfo=UTC)


def test_ping_event_is_what_a_pingsource_sends() -> None:
    before = datetime.now(UTC)
    event = ping.ping_event("objectflow", "daily-report", DATA)
    assert event["type"] == "dev.knative.sources.ping"
    assert event["source"] == "/apis/v1/namespaces/objectflow/pingsources/daily-report"
    assert before <= datetime.fromisoformat(event["time"]) <= datetime.now(UTC)  # the send time
    assert event["datacontenttype"] == "application/json"
    assert event.data == DATA


def test_ping_event_ids_are_random_per_tick() -> None:
    """eventing pkg/adapter/mtping/runner.go `cronTick`: a new UUID for every tick."""
    ids = {ping.ping_event("objectflow", "a", DATA)["id"] for _ in range(3)}
    assert len(ids) == 3
    assert {uuid.UUID(i).version for i in ids} == {4}


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
