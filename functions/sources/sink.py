"""Posting CloudEvents to a sink (`K_SINK`), as every source adapter does.

The sink is the broker (or any Addressable). 2xx means accepted; a 4xx means the sink will
never take this event; anything else (5xx, 408, 429, connection errors) may succeed later, so
the source keeps the event (does not ack or commit) and tries again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import requests
import tenacity
from cloudevents.http import CloudEvent
from prometheus_client import Counter

from functions.runtime import cehttp
from functions.runtime.errors import SettingsError

RETRYABLE = {408, 429}
log = logging.getLogger("objectflow.sources.sink")

MESSAGES = Counter(
    "objectflow_source_messages_total",
    "Messages a source adapter handled, by outcome (received, forwarded, rejected, skipped).",
    ["source", "outcome"],
)
SINK_RETRIES = Counter(
    "objectflow_source_sink_retries_total",
    "Posts to the sink that failed transiently and are retried (or left to the sender to retry).",
    ["source"],
)


class SinkUnavailable(Exception):
    """The sink did not accept the event now; it may later."""


class SinkRejected(Exception):
    """The sink refused the event for good (a 4xx other than 408/429)."""


def sink_url() -> str:
    url = os.environ.get("K_SINK", "")
    if not url.startswith(("http://", "https://")):
        raise SettingsError("K_SINK", "must be the http(s) URL of the sink (the broker)")
    return url


def post(session: requests.Session, url: str, event: CloudEvent, timeout: float = 10.0) -> None:
    """Send `event` in binary mode over a keep-alive session; raise unless the sink accepted it."""
    headers, body = cehttp.encode(event)
    try:
        response = session.post(url, headers=headers, data=body, timeout=timeout)
    except requests.RequestException as exc:
        raise SinkUnavailable(f"{url}: {exc}") from exc
    if response.ok:
        return
    detail = f"{url} answered {response.status_code}: {response.text[:200]}"
    if response.status_code >= 500 or response.status_code in RETRYABLE:
        raise SinkUnavailable(detail)
    raise SinkRejected(detail)


def interruptible_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A sleep for tenacity that a shutdown (`stop` set) ends at once."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


def post_until_accepted(
    session: requests.Session,
    url: str,
    event: CloudEvent,
    *,
    source: str,
    stop: threading.Event,
    within: float | None = None,
    max_wait: float = 10.0,
    on_retry: Callable[[], object] = lambda: None,
) -> None:
    """Post `event` until the sink accepts it: `SinkUnavailable` is retried with exponential
    backoff and jitter, for at most `within` seconds (None: until `stop` is set).

    Raises `SinkRejected` at once, and the last `SinkUnavailable` when giving up or stopping.
    `on_retry` runs before each wait (the Kafka source commits what was acknowledged so far).
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        SINK_RETRIES.labels(source).inc()
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

    give_up: tenacity.stop.stop_base = tenacity.stop_when_event_set(stop)
    if within is not None:
        give_up = give_up | tenacity.stop_after_delay(within)
    tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(SinkUnavailable),
        wait=tenacity.wait_exponential_jitter(initial=0.2, max=max_wait, jitter=0.2),
        stop=give_up,
        sleep=interruptible_sleep(stop),
        before_sleep=before_sleep,
        reraise=True,
    )(post, session, url, event)
