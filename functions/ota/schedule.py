"""When a job is due: `schedule_time`, the next occurrence of a cron in a time zone, or now.

Cron expressions are read in local wall-clock time of the zone, as cron itself does, and turned
into an instant DST-correctly: a wall time that does not exist (the hour skipped in spring)
fires when the clock jumps, at the first instant after the gap; one that occurs twice (the hour
repeated in autumn) fires once, at its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from functions.ota.events import Schedule
from functions.runtime.errors import InvalidData


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidData(f"unknown time zone {name!r} (use an IANA name)", field=field) from None


def check_cron(expression: str) -> str:
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InvalidData(f"not a five-field cron expression: {expression!r}", field="cron")
    return expression


def next_occurrence(expression: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first instant strictly after `after` at which `expression` fires in `tz` (UTC)."""
    local = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    walls = croniter(check_cron(expression), local)
    for _ in range(1000):  # a cron fires at most ~1,440 times a day; this bounds a bad input
        try:
            wall: datetime = walls.get_next(datetime)
        except (CroniterError, ValueError, OverflowError):  # e.g. "0 0 31 2 *" never fires
            break
        instant = _instant(wall, tz)
        if instant > after:
            return instant
    raise InvalidData(f"cron {expression!r} has no occurrence after {after}", field="cron")


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall time as a UTC instant: the first of two, or the end of a gap."""
    early = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if early.astimezone(tz).replace(tzinfo=None) == wall:
        return early
    # `wall` was skipped: fold=0 reads it with the offset before the jump (an instant after the
    # jump), fold=1 with the offset after it (an instant before). The jump lies in between.
    before, after = wall.replace(tzinfo=tz, fold=1).astimezone(UTC), early
    jumped = after.astimezone(tz).utcoffset()
    while after - before > timedelta(seconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(tz).utcoffset() == jumped:
            after = middle
        else:
            before = middle
    return after.replace(microsecond=0)


def resolve(
    *,
    schedule_time: datetime | None,
    cron: str | None,
    timezone: str | None,
    device_timezone: str,
    now: datetime,
    past_tolerance_s: float,
) -> Schedule:
    """The Schedule a request asks for; InvalidData names the field that is wrong."""
    if schedule_time is not None and cron is not None:
        raise InvalidData("give schedule_time or cron, not both", field="cron")
    if schedule_time is not None:
        if timezone is not None:
            raise InvalidData("timezone goes with cron; schedule_time has its offset",
                              field="timezone")  # fmt: skip
        try:
            due = schedule_time.astimezone(UTC)
        except OverflowError:
            raise InvalidData("schedule_time is out of range", field="schedule_time") from None
        if due < now - timedelta(seconds=past_tolerance_s):
            raise InvalidData(
                f"schedule_time {schedule_time.isoformat()} is more than "
                f"{past_tolerance_s:g}s in the past",
                field="schedule_time",
            )
        return Schedule(kind="at", due_at=max(due, now))
    if cron is not None:
        name = timezone or device_timezone
        due = next_occurrence(cron, zone(name), now)
        return Schedule(kind="cron", due_at=due, cron=cron, timezone=name)
    if timezone is not None:
        raise InvalidData("timezone goes with cron", field="timezone")
    return Schedule(kind="now", due_at=now)


def window_open(expression: str, duration_minutes: int, tz: ZoneInfo, now: datetime) -> bool:
    """Whether a maintenance window — opening at each occurrence of `expression` in `tz`
    (read as `next_occurrence` reads it, DST-correctly) and lasting `duration_minutes` of
    real time — is open at `now`: an opening falls in (now - duration, now]."""
    opened = next_occurrence(expression, tz, now - timedelta(minutes=duration_minutes))
    return opened <= now
