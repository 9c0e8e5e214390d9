"""Rollout arithmetic (functions/ota/waves.py): wave sizes, the gate between waves, the abort
rule, pacing; and maintenance windows across DST changes in America/New_York (fixed clocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.ota import waves
from functions.ota.schedule import window_open, zone
from functions.ota.waves import Tally, decide

NEW_YORK = zone("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# --- waves -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percents", "count", "sizes"),
    [
        ([1, 10, 100], 300, [3, 27, 270]),
        ([1, 10, 100], 40, [1, 3, 36]),  # ceil: a 1% wave of 40 devices is one device
        ([1, 10, 100], 5, [1, 0, 4]),  # a wave may be empty: it passes at once
        ([50, 100], 3, [2, 1]),
        ([12.5, 100], 8, [1, 7]),
        ([100], 7, [7]),
    ],
)
def test_waves_are_cumulative_shares_rounded_up(
    percents: list[float], count: int, sizes: list[int]
) -> None:
    assert waves.sizes(percents, count) == sizes
    ends = waves.bounds(percents, count)
    placed = [waves.wave_of(n, ends) for n in range(count)]
    assert [placed.count(i) for i in range(len(sizes))] == sizes
    assert placed == sorted(placed)  # devices join waves in the order given


def tally(size: int, **counts: int) -> Tally:
    return Tally(size, counts)


def test_the_next_wave_starts_once_the_done_jobs_reach_the_threshold() -> None:
    wave1 = tally(20, done=18, downloading=2)  # 90%: not yet at 95
    assert decide(0, -1, [wave1, tally(80, pending=80)], 95, 10, 10).kind == "release"
    wave1 = tally(20, done=19, flashing=1)  # 95%: the straggler does not hold the next wave
    assert decide(0, -1, [wave1, tally(80, pending=80)], 95, 10, 10) == waves.Decision(
        "start", wave=1
    )


def test_an_empty_wave_passes_at_once_and_the_last_one_ends_the_rollout() -> None:
    assert decide(1, -1, [tally(1, done=1), tally(0), tally(4, pending=4)], 95, 10, 1).wave == 2
    last = [tally(1, done=1), tally(4, done=4)]
    assert decide(1, -1, last, 95, 10, 1).kind == "done"
    running = [tally(1, done=1), tally(20, done=19, flashing=1)]  # passed, one still running
    assert decide(1, -1, running, 95, 10, 1).kind == "release"


def test_failures_over_the_abort_share_pause_the_rollout_with_the_reason() -> None:
    wave2 = tally(20, done=6, error=3, timed_out=1, dispatched=10)  # 4 of 10 finished failed
    decision = decide(1, -1, [tally(2, done=2), wave2, tally(78)], 95, 30, 10)
    assert decision.kind == "pause"
    assert decision.reason == (
        "wave 2: 4 of 10 finished jobs failed (error or timed_out), over abort.failure_percent 30%"
    )
    # not before min_finished jobs finished, and not at exactly the share
    assert decide(1, -1, [tally(2, done=2), wave2, tally(78)], 95, 30, 11).kind == "release"
    at_share = tally(20, done=7, error=3, dispatched=10)
    assert decide(1, -1, [tally(2, done=2), at_share, tally(78)], 95, 30, 10).kind == "release"


def test_a_wave_that_finished_below_its_threshold_pauses_even_without_an_abort() -> None:
    wave = tally(10, done=9, error=1)
    decision = decide(0, -1, [wave, tally(90)], 95, 20, 5)
    assert decision.kind == "pause"
    assert decision.reason == "wave 1 finished with 90.0% done, below success_threshold 95%"


def test_a_wave_resumed_past_is_gated_only_by_its_devices_finishing() -> None:
    failing = tally(10, done=5, error=4, downloading=1)
    assert decide(0, -1, [failing, tally(90)], 95, 10, 1).kind == "pause"
    assert decide(0, 0, [failing, tally(90)], 95, 10, 1).kind == "release"
    finished = tally(10, done=5, error=5)
    assert decide(0, 0, [finished, tally(90)], 95, 10, 1) == waves.Decision("start", wave=1)
    # a later wave is judged afresh
    assert decide(1, 0, [finished, tally(90, done=2, error=8)], 95, 10, 1).kind == "pause"


# --- pacing ----------------------------------------------------------------------------------


def test_max_per_minute_is_the_rate_and_the_ramp_grows_by_its_factor() -> None:
    assert waves.rate_per_minute(None, None, 1, 1, 0) is None
    assert waves.rate_per_minute(120, None, 1, 1, 500) == 120
    assert waves.rate_per_minute(None, 10, 2, 50, 0) == 10
    assert waves.rate_per_minute(None, 10, 2, 50, 49) == 10
    assert waves.rate_per_minute(None, 10, 2, 50, 50) == 20
    assert waves.rate_per_minute(None, 10, 2, 50, 175) == 80
    assert waves.rate_per_minute(100, 10, 2, 50, 1000) == 100  # capped by max_per_minute
    assert waves.rate_per_minute(None, 10, 3, 1, 10**6) == 1e9  # never overflows


def test_the_bucket_refills_at_the_rate_and_holds_a_few_seconds_of_it() -> None:
    start = utc(2026, 1, 1)
    assert waves.capacity(120) == 20  # ten seconds of 2/s
    assert waves.capacity(3) == 1  # at least one release
    assert waves.refill(0, start, start + timedelta(seconds=3), 120) == pytest.approx(6)
    assert waves.refill(0, start, start + timedelta(minutes=5), 120) == 20
    assert waves.refill(5, start, start - timedelta(seconds=3), 120) == 5  # a clock step back


def test_releasing_by_the_bucket_spreads_a_minute_as_asked() -> None:
    """Steps every 100 ms for two minutes at 120/min: 120 a minute, never more than the
    bucket's burst at once."""
    start, rate = utc(2026, 1, 1), 120.0
    tokens, since, released = waves.capacity(rate), start, []
    for tenth in range(1, 1201):
        now = start + timedelta(seconds=tenth / 10)
        tokens = waves.refill(tokens, since, now, rate)
        since = now
        take = int(tokens)
        tokens -= take
        released += [now] * take
    first_minute = [t for t in released if t < start + timedelta(minutes=1)]
    assert len(first_minute) == pytest.approx(20 + 120, abs=2)  # the first burst, then 2/s
    second = [t for t in released if t >= start + timedelta(minutes=1)]
    assert len(second) == pytest.approx(120, abs=2)
    per_second = {t.replace(microsecond=0) for t in second}
    assert len(per_second) >= 59  # every second of the minute, not a burst


# --- maintenance windows in each device's zone -----------------------------------------------


@pytest.mark.parametrize(
    ("cron", "minutes", "now", "is_open"),
    [
        # an ordinary night (EST, UTC-5): 02:30-03:30 local is 07:30-08:30 UTC
        ("30 2 * * *", 60, utc(2026, 3, 7, 7, 29), False),
        ("30 2 * * *", 60, utc(2026, 3, 7, 7, 30), True),
        ("30 2 * * *", 60, utc(2026, 3, 7, 8, 29), True),
        ("30 2 * * *", 60, utc(2026, 3, 7, 8, 30), False),
        # 8 March 2026, 02:00 EST -> 03:00 EDT: 02:30 never happens; the window opens when the
        # clock jumps (03:00 EDT = 07:00 UTC) and lasts its 60 real minutes
        ("30 2 * * *", 60, utc(2026, 3, 8, 6, 59), False),
        ("30 2 * * *", 60, utc(2026, 3, 8, 7, 0), True),
        ("30 2 * * *", 60, utc(2026, 3, 8, 7, 59), True),
        ("30 2 * * *", 60, utc(2026, 3, 8, 8, 0), False),
        # the night after, EDT (UTC-4): 06:30 UTC, an hour earlier in UTC than before
        ("30 2 * * *", 60, utc(2026, 3, 9, 6, 29), False),
        ("30 2 * * *", 60, utc(2026, 3, 9, 6, 30), True),
        ("30 2 * * *", 60, utc(2026, 3, 9, 7, 30), False),
        # 1 November 2026, 02:00 EDT -> 01:00 EST: 01:30 happens twice; the window opens at
        # the first (05:30 UTC) only, and 30 minutes are 30 real minutes
        ("30 1 * * *", 30, utc(2026, 11, 1, 5, 29), False),
        ("30 1 * * *", 30, utc(2026, 11, 1, 5, 30), True),
        ("30 1 * * *", 30, utc(2026, 11, 1, 5, 59), True),
        ("30 1 * * *", 30, utc(2026, 11, 1, 6, 30), False),  # the second 01:30 (EST)
        ("30 1 * * *", 30, utc(2026, 11, 2, 6, 30), True),  # then EST: 06:30 UTC
        # a window across midnight and one of a weekday
        ("0 23 * * *", 120, utc(2026, 7, 2, 4, 30), True),  # 00:30 EDT, opened 23:00 EDT
        ("0 9 * * 1", 60, utc(2026, 7, 6, 13, 15), True),  # Monday 09:15 EDT
        ("0 9 * * 1", 60, utc(2026, 7, 7, 13, 15), False),  # Tuesday
    ],
)
def test_a_maintenance_window_in_new_york_across_dst(
    cron: str, minutes: int, now: datetime, is_open: bool
) -> None:
    assert window_open(cron, minutes, NEW_YORK, now) is is_open
