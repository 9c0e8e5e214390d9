"""Posting CloudEvents to a sink (`K_SINK`), as every source adapter does.

The sink is the broker (or any Addressable). 2xx means accepted. 5xx, 404, 408, 409, 429 and
connection errors may succeed later, as both Knative brokers treat them (eventing
pkg/kncloudevents/retries.go `SelectiveRetry`; eventing-kafka-broker
`WebClientCloudEventSender.isRetryableStatusCode`; the Kafka ingress answers 404 while a broker
is still being registered), so the source keeps the event and tries again. Any other 4xx means
the sink will never take it: the source dead-letters it (`dead_letter`) rather than block on it.
"""

from __future__ import annotations

import base64
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

RETRYABLE = frozenset({404, 408, 409, 429})
DEAD_LETTER_ENV = "OBJECTFLOW_DEAD_LETTER_SINK"
log = logging.getLogger("objectflow.sources.sink")

MESSAGES = Counter(
    "objectflow_source_messages_total",
    "Messages a source adapter handled, by outcome (received, forwarded, dead-lettered, "
    "rejected, skipped).",
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
    """The sink refused the event for good (a 4xx other than 404/408/409/429)."""

    def __init__(self, detail: str, status: int | None = None, body: str = "") -> None:
        super().__init__(detail)
        self.status, self.body = status, body


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer of a sink or subscriber may succeed when retried."""
    return status >= 500 or status in RETRYABLE


def sink_url() -> str:
    url = os.environ.get("K_SINK", "")
    if not url.startswith(("http://", "https://")):
        raise SettingsError("K_SINK", "must be the http(s) URL of the sink (the broker)")
    return url


class Sessions:
    """A keep-alive session to the sink per thread (a requests Session is not thread-safe).

    The sink is the cluster's broker or a function, never reached through a proxy, so the
    sessions ignore the environment (`trust_env`): else requests looks for ~/.netrc and proxy
    variables on every post, about 10% of the MQTT bridge's CPU under load."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.made: list[requests.Session] = []

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
            self.made.append(session)
        return session

    def close(self) -> None:
        for session in self.made:
            session.close()


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
    if retryable_status(response.status_code):
        raise SinkUnavailable(detail)
    raise SinkRejected(detail, response.status_code, response.text)


def dead_letter_url() -> str | None:
    """Where a source sends what its sink can never accept (`OBJECTFLOW_DEAD_LETTER_SINK`)."""
    return os.environ.get(DEAD_LETTER_ENV) or None


def dead_letter_event(event: CloudEvent, *, destination: str, reason: SinkRejected) -> CloudEvent:
    """`event` with Knative's error extensions: `knativeerrordest`, `knativeerrorcode` (when
    there was an answer) and `knativeerrordata` (the answer's body or the reason, base64)."""
    body = (reason.body or str(reason)).encode()[:1024]
    return CloudEvent(
        {
            **event.get_attributes(),
            "knativeerrordest": destination,
            "knativeerrordata": base64.b64encode(body).decode(),
            **({"knativeerrorcode": str(reason.status)} if reason.status else {}),
        },
        event.get_data(),
    )


def dead_letter(
    session: requests.Session,
    url: str,
    event: CloudEvent,
    *,
    destination: str,
    reason: SinkRejected,
    source: str,
    stop: threading.Event,
) -> None:
    """Post `event` as a dead letter (`dead_letter_event`) until it is stored or `stop` is set;
    raises SinkRejected when the dead-letter sink refuses it for good."""
    letter = dead_letter_event(event, destination=destination, reason=reason)
    post_until_accepted(session, url, letter, source=f"{source}/dead-letter", stop=stop)


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

    give_up: tenacity.stop.stop_base = tenacity.stop_when_event_set(stop)
    if within is not None:
        give_up = give_up | tenacity.stop_after_delay(within)
    tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(SinkUnavailable),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=max_wait, jitter=0.2),
        stop=give_up,
        sleep=interruptible_sleep(stop),
        before_sleep=_announce_retry(event, source, on_retry),
        reraise=True,
    )(post, session, url, event)


def post_with_retries(
    session: requests.Session,
    url: str,
    event: CloudEvent,
    *,
    source: str,
    retries: int,
    delay: Callable[[int], float],
    timeout: float,
    stop: threading.Event,
    on_retry: Callable[[], object] = lambda: None,
) -> None:
    """Post `event` as a Knative dispatcher delivers: at most `retries` redeliveries, waiting
    `delay(n)` before redelivery n. Raises `SinkRejected` at once, and the last
    `SinkUnavailable` after the last retry (or when `stop` is set)."""
    tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(SinkUnavailable),
        wait=lambda state: delay(state.attempt_number),
        stop=tenacity.stop_after_attempt(retries + 1) | tenacity.stop_when_event_set(stop),
        sleep=interruptible_sleep(stop),
        before_sleep=_announce_retry(event, source, on_retry),
        reraise=True,
    )(post, session, url, event, timeout)


def _announce_retry(
    event: CloudEvent, source: str, on_retry: Callable[[], object]
) -> Callable[[tenacity.RetryCallState], None]:
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

    return before_sleep
