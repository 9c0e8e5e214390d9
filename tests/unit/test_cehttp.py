"""cehttp's fast paths build exactly what the CloudEvents SDK builds."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from functions.runtime import cehttp

BINARY = [
    ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b'{"a": 1}'),
    (
        {
            "Ce-Specversion": "1.0",
            "CE-ID": "2",
            "ce-source": "/cam%C3%BC%20x",
            "ce-type": "t",
            "ce-subject": "bucket/%C3%BCn key.jpg",
            "ce-partitionkey": "cam-1",
            "ce-time": "2026-01-01T00:00:00Z",
            "Content-Type": "application/octet-stream",
            "traceparent": "00-abc-def-01",
        },
        b"\x00\xff raw",
    ),
    ({"ce-specversion": "1.0", "ce-id": "3", "ce-source": "/s", "ce-type": "t"}, b""),
    (
        {
            "ce-specversion": "1.0",
            "ce-id": "4",
            "ce-source": "/s",
            "ce-type": "t",
            "content-type": "application/json",
        },
        b'[1, "two", {"3": null}]',
    ),
    ({"ce-specversion": "1.0", "ce-id": "5", "ce-source": "/s", "ce-type": "t"}, b"{not json"),
    ({"ce-specversion": "1.0", "ce-id": "6", "ce-source": "/s", "ce-type": "t"}, b'"\xff"'),
]


@pytest.mark.parametrize("raw_data", [True, False])
@pytest.mark.parametrize(("headers", "body"), BINARY)
def test_binary_decode_matches_the_sdk(
    headers: dict[str, str], body: bytes, raw_data: bool
) -> None:
    fast = cehttp.decode(headers, body, raw_data=raw_data)
    plain = {k: unquote(v) if k.lower().startswith("ce-") else v for k, v in headers.items()}
    sdk = (
        from_http(plain, body, data_unmarshaller=lambda data: data)
        if raw_data
        else from_http(plain, body)
    )
    same_time = {"time": sdk["time"]}  # the SDK stamps a missing `time` with now
    assert {**fast.get_attributes(), **same_time} == {**sdk.get_attributes(), **same_time}
    assert fast.get_data() == sdk.get_data()


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type", "ce-specversion"])
def test_an_incomplete_binary_event_is_refused_as_by_the_sdk(missing: str) -> None:
    headers = {k: v for k, v in BINARY[0][0].items() if k != missing}
    with pytest.raises(GenericException):
        cehttp.decode(headers, b"{}", raw_data=True)


@pytest.mark.parametrize(("headers", "body"), BINARY)
def test_encoding_attributes_matches_the_sdk(headers: dict[str, str], body: bytes) -> None:
    event = cehttp.decode(headers, body, raw_data=True)
    fast = cehttp.encode_attributes(event.get_attributes(), event.get_data())
    assert fast == cehttp.encode(CloudEvent(dict(event.get_attributes()), event.get_data()))
    assert to_binary(event)[1] == fast[1]
