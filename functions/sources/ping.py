"""Cron ticks as a Knative PingSource sends them; the Kubernetes CronJob variant of a schedule.

    python -m functions.sources.ping --name NAME --namespace NS --cron CRON [--timezone TZ]
                                     [--data JSON]

The chart's CronJob for schedule NAME runs this once per matching minute; it posts the ping
CloudEvent to `K_SINK` (the broker). A 6-field cron (seconds last, as croniter and the local
ticker read it) runs the CronJob every minute and fires at each matching second of that minute.
As Knative's PingSource (eventing pkg/adapter/mtping/runner.go `cronTick`), each tick gets a
random id and `time` is when it is sent; a retried post keeps both, but a retried Job is a new
tick (subscribers dedupe by schedule and time themselves if they must). The local ticker
(devstack/runtime/ticker.py) builds its events here too, so both engines send the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests
from cloudevents.http import CloudEvent
from croniter import croniter

from functions.runtime import logging as json_logging
from functions.runtime.errors import SettingsError
from functions.sources import sink

PING_EVENT = "dev.knative.sources.ping"
log = logging.getLogger("objectflow.sources.ping")


def ping_event(namespace: str, name: str, data: dict[str, Any]) -> CloudEvent:
    """The CloudEvent PingSource `name` in `namespace` sends now: a new id, `time` now."""
    attributes = {
        "type": PING_EVENT,
        "source": f"/apis/v1/namespaces/{namespace}/pingsources/{name}",
        "id": str(uuid.uuid4()),
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


def due_in_minute(cron: str, timezone: str, now: datetime) -> list[datetime]:
    """The occurrences a CronJob started at `now` fires: the minute's own for a 5-field cron
    (the CronJob matched it), each matching second of the minute for a 6-field one."""
    minute = now.astimezone(ZoneInfo(timezone)).replace(second=0, microsecond=0)
    if len(cron.split()) < 6:
        return [minute]
    times = croniter(cron, minute - timedelta(microseconds=1))
    due = [times.get_next(datetime)]
    while due[-1] < minute + timedelta(minutes=1):
        due.append(times.get_next(datetime))
    return due[:-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.sources.ping")
    parser.add_argument("--name", required=True, help="schedule name (values.yaml `schedules`)")
    parser.add_argument("--namespace", required=True, help="values.yaml `namespace`")
    parser.add_argument("--cron", required=True)
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--data", type=json.loads, default={}, help="JSON event data")
    args = parser.parse_args(argv)
    json_logging.configure("ping")
    try:
        url = sink.sink_url()
    except SettingsError as exc:
        parser.exit(2, f"{parser.prog}: {exc.detail}\n")
    delivered = 0
    with requests.Session() as session:
        for at in due_in_minute(args.cron, args.timezone, datetime.now(UTC)):
            time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))
            event = ping_event(args.namespace, args.name, args.data)
            try:  # a tick not delivered within the minute is dropped, as PingSource does
                sink.post_until_accepted(
                    session, url, event, source="ping", within=60, stop=threading.Event()
                )
            except (sink.SinkUnavailable, sink.SinkRejected) as exc:
                log.error("tick dropped", extra={"schedule": args.name, "error": str(exc)})
                continue
            delivered += 1
            log.info("tick delivered", extra={"schedule": args.name, "id": event["id"]})
    return 0 if delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
