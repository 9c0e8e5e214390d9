"""The arithmetic of a rollout, free of I/O: wave sizes, the gate between waves, the abort rule
and the pacing of releases (docs/ota.md, "Rollouts"). ota-rollouts (functions/ota/advance.py)
feeds it what PostgreSQL holds and carries out what it decides.

- Waves are cumulative percents of the device set: [1, 10, 100] over 300 devices is 3, 27 and
  270 devices (ceil(percent * n / 100) devices are in waves up to that one).
- A wave is *passed* once its `done` jobs are at least `success_threshold` percent of its
  devices; then the next wave starts. A wave whose devices all finished below it pauses the
  rollout instead (its failures were not enough to abort, but the gate is not met).
- A started wave whose `error` + `timed_out` jobs exceed `abort.failure_percent` of its
  finished ones (once at least `abort.min_finished` finished) pauses the rollout. A wave the
  operator resumed past (`accepted`) is gated by nothing but all its devices finishing.
- Pacing: a token bucket refilled at the rollout's rate (`max_per_minute`, or the exponential
  ramp `base_per_minute * factor ** (succeeded // every_succeeded)`, capped by max_per_minute
  when both are given), holding at most BURST_S seconds of it, so commands leave in small
  steps rather than a minute's worth at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Literal

FINAL = ("done", "error", "timed_out", "cancelled")
FAILED = ("error", "timed_out")
PENDING = "pending"  # a device of the rollout without a job (not released yet), online
OFFLINE = "offline"  # the same, but not seen within OTA_ONLINE_WINDOW: it waits for a heartbeat
BURST_S = 10.0  # the most a bucket holds, in seconds of its rate


def bounds(percents: Sequence[float], count: int) -> list[int]:
    """The end (exclusive) of each wave in the ordered device set of `count` devices."""
    return [math.ceil(Fraction(str(p)) * count / 100) for p in percents]


def sizes(percents: Sequence[float], count: int) -> list[int]:
    ends = bounds(percents, count)
    return [end - start for start, end in zip([0, *ends], ends, strict=False)]


def wave_of(position: int, ends: Sequence[int]) -> int:
    """The (0-based) wave of the device at `position`."""
    return next(i for i, end in enumerate(ends) if position < end)


@dataclass(frozen=True)
class Tally:
    """One wave's devices by the status of their job (`pending`, `offline`: none yet)."""

    size: int
    counts: Mapping[str, int] = field(default_factory=dict)

    def of(self, *statuses: str) -> int:
        return sum(self.counts.get(s, 0) for s in statuses)

    @property
    def finished(self) -> int:
        return self.of(*FINAL)

    @property
    def failed(self) -> int:
        return self.of(*FAILED)

    @property
    def all_finished(self) -> bool:
        return self.finished >= self.size

    def passed(self, threshold: float) -> bool:
        return self.of("done") * 100 >= threshold * self.size

    def aborts(self, failure_percent: float, min_finished: int) -> bool:
        finished = self.finished - self.of("cancelled")
        return finished >= min_finished and self.failed * 100 > failure_percent * finished


@dataclass(frozen=True)
class Decision:
    kind: Literal["pause", "start", "done", "release"]
    wave: int = 0  # for start: the wave to start
    reason: str | None = None


def decide(
    wave: int,
    accepted_wave: int,
    tallies: Sequence[Tally],
    threshold: float,
    failure_percent: float,
    min_finished: int,
) -> Decision:
    """What a running rollout whose latest started wave is `wave` does next."""
    for i in range(accepted_wave + 1, wave + 1):
        t = tallies[i]
        if t.aborts(failure_percent, min_finished):
            finished = t.finished - t.of("cancelled")
            return Decision("pause", reason=(
                f"wave {i + 1}: {t.failed} of {finished} finished jobs failed (error or "
                f"timed_out), over abort.failure_percent {failure_percent:g}%"))  # fmt: skip
    current = tallies[wave]
    accepted = wave <= accepted_wave
    gate = current.all_finished if accepted else current.passed(threshold)
    if not gate:
        if current.all_finished:
            share = 100 * current.of("done") / current.size
            return Decision("pause", reason=(
                f"wave {wave + 1} finished with {share:.1f}% done, below success_threshold "
                f"{threshold:g}%"))  # fmt: skip
        return Decision("release")
    if wave + 1 < len(tallies):
        return Decision("start", wave=wave + 1)
    if all(t.all_finished for t in tallies):
        return Decision("done", reason="every wave finished")
    return Decision("release")


def rate_per_minute(
    max_per_minute: int | None,
    base_per_minute: float | None,
    factor: float,
    every_succeeded: int,
    succeeded: int,
) -> float | None:
    """Releases per minute now; None: unpaced (the dispatcher's own rate limit still holds)."""
    if base_per_minute is None:
        return None if max_per_minute is None else float(max_per_minute)
    steps = succeeded // every_succeeded
    # factor ** steps overflows long before it matters: stop growing past the cap or 1e9/min
    ramp = base_per_minute * factor ** min(steps, 1000) if factor > 1 else base_per_minute
    ramp = min(ramp, 1e9)
    return ramp if max_per_minute is None else min(ramp, float(max_per_minute))


def capacity(rate: float) -> float:
    """The bucket's size: BURST_S seconds of the rate, and at least one release."""
    return max(1.0, rate * BURST_S / 60)


def refill(tokens: float, since: datetime, now: datetime, rate: float) -> float:
    """The bucket's tokens at `now`, last set to `tokens` at `since`."""
    elapsed = max(0.0, (now - since).total_seconds())
    return min(capacity(rate), tokens + elapsed * rate / 60)
