"""CloudEvents over HTTP with the binding's header encoding, which the Python SDK leaves out.

In binary mode every attribute travels as a `ce-*` header, and the HTTP binding (CloudEvents
1.0.2, section 3.1.3.2) requires percent-encoding of space, `"`, `%` and anything outside
printable ASCII; receivers decode. Without it a subject such as `bucket/ünï key.jpg` is mangled
on the way (HTTP header values are Latin-1 at best). Use these two instead of the SDK's
`to_binary` / `from_http` wherever an event crosses HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from cloudevents.abstract import AnyCloudEvent
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

_REQUIRED = ("ce-id", "ce-source", "ce-type")  # and ce-specversion
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def encode(event: AnyCloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers (ce-* values percent-encoded) and body."""
    headers, body = to_binary(event)
    return {k: quote(v, safe=_SAFE) if _is_attribute(k) else v for k, v in headers.items()}, body


def encode_attributes(
    attributes: Mapping[str, Any], data: bytes | None
) -> tuple[dict[str, str], bytes | None]:
    """What `encode` makes of an event whose data is bytes already (a broker forwarding the
    body it received), built from its attributes without the SDK's per-event objects."""
    content_type = attributes.get("datacontenttype")
    headers = {"content-type": content_type} if content_type else {}
    for name, value in attributes.items():
        if name != "datacontenttype" and value is not None:
            headers[f"ce-{name}"] = quote(str(value), safe=_SAFE)
    return headers, data


def decode(headers: Mapping[str, str], body: bytes | None, *, raw_data: bool = False) -> CloudEvent:
    """A CloudEvent from binary or structured HTTP; ce-* header values percent-decoded.
    `raw_data`: a binary-mode body stays bytes (a broker forwarding it unchanged, as Knative's do)
    instead of being parsed as JSON and serialised again."""
    plain = {k.lower(): unquote(v) if _is_attribute(k) else v for k, v in headers.items()}
    if plain.get("ce-specversion") == "1.0" and all(h in plain for h in _REQUIRED):
        # What the SDK builds from a complete binary-mode request, without its per-event
        # marshaller objects (the broker's ingress, every function's event); anything else gets
        # the SDK's checks.
        attributes = {k[3:]: v for k, v in plain.items() if k.startswith("ce-")}
        if "content-type" in plain:
            attributes["datacontenttype"] = plain["content-type"]
        data: Any = body or None
        if data is not None and not raw_data:
            data = _json_or_bytes(data)
        return CloudEvent(attributes, data)
    if not raw_data:
        return from_http(plain, body)
    return from_http(plain, body, data_unmarshaller=lambda data: data)


def _json_or_bytes(body: bytes) -> Any:
    """The SDK's default data unmarshaller: the parsed JSON, else the body as it came."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return body


def _is_attribute(header: str) -> bool:
    return header[:3].lower() == "ce-"
