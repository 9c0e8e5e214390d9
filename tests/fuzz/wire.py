"""What the fuzz targets share: payloads an outsider might send, and an event's trip over HTTP
into a function, as the broker delivers it."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import flask
from cloudevents.abstract import AnyCloudEvent
from hypothesis import strategies as st

from functions.runtime import cehttp
from functions.runtime.adapter import Event, cloudevent_function

# An MQTT topic level as paho hands it over: UTF-8 text without wildcards or NUL.
topic_levels = st.text(
    st.characters(codec="utf-8", exclude_characters="/+#\x00"), min_size=1, max_size=20
)
# Any JSON value (NaN and infinities are Python's JSON extensions: devices could send them).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def json_bytes(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: json.dumps(v).encode())


def payloads(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bytes as they come: random, any JSON, or (half the time) JSON of the expected shape with
    fuzzed fields."""
    shaped_bytes = json_bytes(shaped)
    return st.one_of(st.binary(max_size=512), json_bytes(json_values), shaped_bytes, shaped_bytes)


@dataclass(frozen=True)
class Rejected:
    """A function's 4xx answer."""

    status: int
    body: dict[str, Any]


APP = flask.Flask("fuzz")


@functools.cache
def _function(accepts: tuple[str, ...], raw_data: bool) -> tuple[Any, list[Event[Any]]]:
    """A function behind the real adapter whose handler only keeps what it was given."""
    received: list[Event[Any]] = []

    @cloudevent_function("fuzz-target", accepts=list(accepts), idempotent=False, raw_data=raw_data)
    def target(event: Event[Any]) -> None:
        received.append(event)

    return target, received


def delivered(
    event: AnyCloudEvent, accepts: list[str], *, raw_data: bool = False
) -> Event[Any] | Rejected:
    """The event after HTTP (binary mode, as the broker posts it) and the function adapter: the
    Event its handler gets, or the adapter's 4xx. A 5xx fails the test: no input may cause one."""
    view, received = _function(tuple(accepts), raw_data)
    headers, body = cehttp.encode(event)
    received.clear()
    with APP.test_request_context("/", method="POST", headers=headers, data=body):
        response = view(flask.request)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code == 204:
        return received[0]
    assert response.status_code in (400, 413, 415, 422), response.status_code
    return Rejected(response.status_code, response.get_json())
