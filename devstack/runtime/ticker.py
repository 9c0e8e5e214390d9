"""Local stand-in for Knative PingSources: each schedule of the wiring fires cron ticks to K_SINK.

    python -m devstack.runtime.ticker [--values FILE ...]

A tick is the CloudEvent a PingSource sends (built by `functions.sources.ping`, which the chart's
CronJobs run too): a random id per tick, `time` when it is sent. A tick that cannot be
delivered before the next one is due is logged and dropped, as PingSource does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
from cloudevents.http import CloudEvent
from croniter import croniter
from prometheus_client import start_http_server

from devstack import wiring
from devstack.errors import DevstackError
from devstack.runtime.sources_common import exit_on_bad_settings
from functions.runtime import cehttp
from functions.runtime import logging as json_logging
from functions.sources import sink
from functions.sources.ping import ping_event

SOURCE = "cron-ticker"
MANUAL_RETRY_WINDOW = 10.0  # `objectflow tick` gives up after this many seconds

log = logging.getLogger("objectflow.ticker")


def next_fire(schedule: wiring.Schedule, after: datetime) -> datetime:
    """The first occurrence strictly after `after`, computed in the schedule's time zone (so
    `0 9 * * *` stays 09:00 local across a DST change)."""
    return croniter(schedule.cron, after.astimezone(ZoneInfo(schedule.timezone))).get_next(datetime)


def _seconds_until(moment: datetime) -> float:
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def run_schedule(name: str, values: wiring.Values, url: str, stop: threading.Event) -> None:
    """Fire `name` on every occurrence until `stop` is set."""
    schedule = values.schedules[name]
    due = next_fire(schedule, datetime.now(UTC))
    with requests.Session() as session:
        while not stop.wait(_seconds_until(due)):
            following = next_fire(schedule, due)
            event = ping_event(values.namespace, name, schedule.data)
            window = (following - due).total_seconds()
            try:
                sink.post_until_accepted(
                    session, url, event, source=SOURCE, within=window, stop=stop
                )
                log.info("tick delivered", extra={"schedule": name, "id": event["id"]})
                sink.MESSAGES.labels(SOURCE, "forwarded").inc()
            except (sink.SinkUnavailable, sink.SinkRejected) as exc:
                log.error("tick dropped", extra={"schedule": name, "error": str(exc)})
                sink.MESSAGES.labels(SOURCE, "dropped").inc()
            # Occurrences missed while posting (or while the machine slept) are skipped.
            due = next_fire(schedule, max(due, datetime.now(UTC)))


class UnknownSchedule(DevstackError):
    pass


class TickFailed(DevstackError):
    pass


def fire(schedule_name: str, values: wiring.Values, sink_url: str) -> CloudEvent:
    """Fire one tick of `schedule_name` now and return the delivered event."""
    schedule = values.schedules.get(schedule_name)
    if schedule is None:
        declared = ", ".join(values.schedules) or "none"
        raise UnknownSchedule(f"no schedule {schedule_name!r} in the wiring (declared: {declared})")
    event = ping_event(values.namespace, schedule_name, schedule.data)
    with requests.Session() as session:
        try:
            sink.post_until_accepted(
                session,
                sink_url,
                event,
                source="tick",
                within=MANUAL_RETRY_WINDOW,
                stop=threading.Event(),
            )
        except (sink.SinkUnavailable, sink.SinkRejected) as exc:
            raise TickFailed(f"tick of {schedule_name!r} not delivered: {exc}") from None
    return event


def fire_by_hand(schedule_name: str, overlays: Sequence[Path]) -> CloudEvent:
    """`objectflow tick`: the wiring plus overlays; K_SINK, else the local broker."""
    try:
        values = wiring.load(*overlays)
    except wiring.WiringError as exc:
        raise DevstackError(str(exc)) from None
    url = os.environ.get("K_SINK") or f"http://127.0.0.1:{values.local.broker_port}/"
    return fire(schedule_name, values, url)


@dataclass(frozen=True)
class Run:
    """What one function the schedule triggers answered to a tick fired by hand."""

    function: str
    status: int
    reply: CloudEvent | None
    event_id: str  # of the tick


def run_by_hand(schedule_name: str, overlays: Sequence[Path]) -> list[Run]:
    """`objectflow tick` on the local runtime: deliver the tick to every function the schedule
    triggers, as the broker would, and return their answers. A reply goes on to the broker, so
    its subscribers get it as after a scheduled tick."""
    try:
        values = wiring.load(*overlays)
    except wiring.WiringError as exc:
        raise DevstackError(str(exc)) from None
    if schedule_name not in values.schedules:
        declared = ", ".join(values.schedules) or "none"
        raise UnknownSchedule(f"no schedule {schedule_name!r} in the wiring (declared: {declared})")
    schedule = values.schedules[schedule_name]
    event = ping_event(values.namespace, schedule_name, schedule.data)
    ports, broker = values.function_ports(), f"http://127.0.0.1:{values.local.broker_port}/"
    headers, body = cehttp.encode(event)
    runs = []
    with requests.Session() as session:
        for function, spec in values.functions.items():
            if not any(trigger.schedule == schedule_name for trigger in spec.triggers):
                continue
            url = f"http://127.0.0.1:{ports[function]}/"
            try:
                answer = session.post(url, headers=headers, data=body, timeout=MANUAL_RETRY_WINDOW)
            except requests.RequestException as exc:
                raise TickFailed(f"{function} did not answer the tick: {exc}") from None
            reply = None
            if answer.ok and answer.content:
                reply = cehttp.decode(dict(answer.headers), answer.content)
                sink.post(session, broker, reply)
            runs.append(Run(function, answer.status_code, reply, event["id"]))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.runtime.ticker")
    parser.add_argument("--values", action="append", type=Path, default=[], help="overlay")
    args = parser.parse_args(argv)
    with exit_on_bad_settings(parser.prog):
        values = wiring.load(*args.values)
        url = sink.sink_url()
    json_logging.configure("ticker")
    if port := os.environ.get("OBJECTFLOW_METRICS_PORT"):
        start_http_server(int(port))  # ticks forwarded and dropped, the sink's retries
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threads = [
        threading.Thread(target=run_schedule, args=(name, values, url, stop), name=name)
        for name in values.schedules
    ]
    for thread in threads:
        thread.start()
    log.info("ticker started", extra={"schedules": list(values.schedules), "sink": url})
    stop.wait()
    for thread in threads:
        thread.join()
    log.info("ticker stopped")


if __name__ == "__main__":
    main()
