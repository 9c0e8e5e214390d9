"""The cron ticker and `objectflow tick` posting real PingSource events to a local sink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cloudevents.http import CloudEvent

from devstack import wiring
from tests.conftest import ROOT
from tests.integration.test_kafka_source import overlay, start, terminate
from tests.support import RecordingSink

PINGSOURCES = "/apis/v1/namespaces/objectflow/pingsources"
KOLKATA = "Asia/Kolkata"  # UTC+05:30: its hour is never the UTC hour


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as recording:
        yield recording


def test_ticker_fires_every_second_in_its_zone_and_retries_with_the_same_id(
    sink: RecordingSink, tmp_path: Path, wait_for: Callable[..., object]
) -> None:
    hour = datetime.now(ZoneInfo(KOLKATA)).hour
    # Every second of this Kolkata hour and the next: fires only if the zone is honoured; the
    # same expression read in UTC (the control, 5-6 hours behind) must stay silent.
    every_second = f"* {hour},{(hour + 1) % 24} * * * *"
    values = overlay(
        tmp_path,
        {
            "schedules": {
                "local-hour": {"cron": every_second, "timezone": KOLKATA, "data": {"k": "v"}},
                "utc-hour": {"cron": every_second, "timezone": "UTC"},
            }
        },
    )
    refused: set[str] = set()

    def first_try_fails(event: CloudEvent) -> int:  # every tick's first post is answered 503
        if event["id"] in refused:
            return 202
        refused.add(event["id"])
        return 503

    sink.answer = first_try_fails

    def ours() -> list[CloudEvent]:  # the chart's own every-minute schedules tick here too
        return [
            e
            for e in sink.accepted()
            if e["source"].rsplit("/", 1)[1] in ("local-hour", "utc-hour")
        ]

    ticker = start("devstack.runtime.ticker", ["--values", str(values)], sink.url)
    try:
        wait_for(lambda: len(ours()) >= 3, timeout=20, what="three ticks")
        terminate(ticker)
    finally:
        if ticker.poll() is None:
            ticker.kill()
    ticks = ours()
    assert {e["source"] for e in ticks} == {f"{PINGSOURCES}/local-hour"}
    assert {e["type"] for e in ticks} == {"dev.knative.sources.ping"}
    assert all(e.data == {"k": "v"} for e in ticks)
    times = [datetime.fromisoformat(e["time"]) for e in ticks]
    assert times == sorted(set(times))  # `time`: when each tick was sent
    assert all(sink.tries(e["id"]) == 2 for e in ticks)  # retried post keeps its id
    assert abs((datetime.now(UTC) - times[-1]).total_seconds()) < 10


def tick(*args: str, sink_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "K_SINK": sink_url}
    command = [sys.executable, "-m", "devstack.cli", "tick", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_objectflow_tick_fires_one_ping_by_hand(sink: RecordingSink, tmp_path: Path) -> None:
    values = overlay(tmp_path, {"schedules": {"nightly": {"cron": "0 3 * * *", "data": {"a": 1}}}})
    done = tick("nightly", "--values", str(values), sink_url=sink.url)
    assert done.returncode == 0, done.stderr
    [event] = sink.accepted()
    assert done.stdout.strip() == event["id"]
    assert event["type"] == "dev.knative.sources.ping"
    assert event["source"] == "/apis/v1/namespaces/objectflow/pingsources/nightly"
    assert event.data == {"a": 1}


def test_objectflow_tick_of_an_unknown_schedule_is_one_clear_line(
    sink: RecordingSink, tmp_path: Path
) -> None:
    values = overlay(tmp_path, {"schedules": {"nightly": {"cron": "0 3 * * *"}}})
    done = tick("nope", "--values", str(values), sink_url=sink.url)
    assert done.returncode == 1
    output = (done.stdout + done.stderr).strip()
    declared = ", ".join([*wiring.default().schedules, "nightly"])  # values.yaml's + overlay's
    assert output.splitlines() == [
        f"error: no schedule 'nope' in the wiring (declared: {declared})"
    ], output
    assert sink.attempts == []
