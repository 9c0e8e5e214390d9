"""What the local source stand-ins share: KafkaSource (`kafka_source`) and PingSource (`ticker`)
both post through `functions.sources.sink` and retry the same way, with `deliver` below."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import requests
import tenacity
from cloudevents.http import CloudEvent

from devstack import wiring
from functions.runtime.errors import SettingsError
from functions.sources import sink

log = logging.getLogger(__name__)


def deliver(
    session: requests.Session,
    url: str,
    event: CloudEvent,
    *,
    within: float,
    stop: threading.Event,
    on_retry: Callable[[], object] = lambda: None,
) -> None:
    """Post `event` until the sink accepts it, retrying `SinkUnavailable` with exponential
    backoff and jitter for at most `within` seconds (or until `stop` is set).

    Raises `SinkRejected` at once, and the last `SinkUnavailable` when giving up. `on_retry` runs
    before each wait (the Kafka source commits what was acknowledged so far).
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        log.warning(
            "sink unavailable, retrying",
            extra={
                "id": event["id"],
                "attempt": state.attempt_number,
                "error": str(state.outcome.exception()) if state.outcome else "",
                "wait": round(state.upcoming_sleep, 2),
            },
        )
        on_retry()

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # a shutdown ends the backoff at once

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(sink.SinkUnavailable),
        wait=tenacity.wait_exponential_jitter(initial=0.2, max=10.0, jitter=0.2),
        stop=tenacity.stop_after_delay(within) | tenacity.stop_when_event_set(stop),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    retrying(sink.post, session, url, event)


@contextmanager
def exit_on_bad_settings(prog: str) -> Iterator[None]:
    """A bad wiring or environment ends the process with one line on stderr, not a traceback."""
    try:
        yield
    except (wiring.WiringError, SettingsError) as exc:
        raise SystemExit(f"{prog}: {exc}") from None
