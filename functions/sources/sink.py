"""Posting CloudEvents to a sink (`K_SINK`), as every source adapter does.

The sink is the broker (or any Addressable). 2xx means accepted; a 4xx means the sink will
never take this event; anything else (5xx, 408, 429, connection errors) may succeed later, so
the source keeps the event (does not ack or commit) and tries again.
"""

from __future__ import annotations

import os

import requests
from cloudevents.http import CloudEvent
from prometheus_client import Counter

from functions.runtime import cehttp
from functions.runtime.errors import SettingsError

RETRYABLE = {408, 429}

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
