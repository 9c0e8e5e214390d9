"""What the two Knative broker classes do differently, for the local broker to mirror.

The local broker reads values' `broker.class` and asks this module wherever the classes part:
backoff (`wiring.Delivery.delay`), the ingress's size limit, a 2xx whose body is no CloudEvent,
the TTL loop guard and arrival time (MT only), and the error extensions of a dead letter. The
rules and the Knative source each follows are tabled in docs/architecture.md ("Knative parity"),
at knative/eventing `knative-v1.16.3` (MT) and eventing-kafka-broker `knative-v1.16.1` (Kafka).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent

from devstack.wiring import BrokerClass

TTL = "knativebrokerttl"
ARRIVAL = "knativearrivaltime"
DEFAULT_TTL = 255  # MT's TTLDefaulter
ERROR_DATA_MAX = 1024
DISPATCH_ERROR = "dispatch error"  # MT's knativeerrordata when no HTTP answer came
KAFKA_MAX_REQUEST = 1024 * 1024  # the Kafka ingress producer's max.request.size


@dataclass(frozen=True)
class Rules:
    broker_class: BrokerClass

    @property
    def mt(self) -> bool:
        return self.broker_class == "MTChannelBasedBroker"

    @property
    def max_event_bytes(self) -> int | None:
        """The ingress answers 503 above this (the Kafka producer's limit); MT has none."""
        return None if self.mt else KAFKA_MAX_REQUEST

    @property
    def retries_invalid_reply(self) -> bool:
        """MT's filter answers 502 for a 2xx whose body is no CloudEvent (retried, then
        dead-lettered: filter_handler.go `writeResponse`); the Kafka broker dead-letters it at
        once (`BaseResponseHandler.handle`)."""
        return self.mt

    def arrived(self, event: CloudEvent) -> None:
        """MT ingress: `knativearrivaltime`, and `knativebrokerttl` 255 unless set already."""
        if not self.mt:
            return
        event[ARRIVAL] = datetime.now(UTC).isoformat()
        if event.get(TTL) is None:
            event[TTL] = str(DEFAULT_TTL)

    def expired(self, event: CloudEvent) -> bool:
        """MT drops an event with no hops left (a reply loop ends after 255)."""
        ttl = event.get(TTL)
        return self.mt and ttl is not None and _int(ttl) <= 0

    def for_subscriber(self, event: CloudEvent) -> CloudEvent:
        """MT's filter removes the TTL before it delivers: subscribers never see it."""
        if not self.mt or event.get(TTL) is None:
            return event
        return CloudEvent(self.subscriber_attributes(event.get_attributes()), event.get_data())

    def subscriber_attributes(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """`for_subscriber` on the attributes alone (the broker's hot path)."""
        if not self.mt or TTL not in attributes:
            return attributes
        return {k: v for k, v in attributes.items() if k != TTL}

    def reply_to(self, reply: CloudEvent, cause: CloudEvent) -> CloudEvent:
        """A reply uses one hop of its cause's TTL."""
        if self.mt and cause.get(TTL) is not None:
            reply[TTL] = str(_int(cause[TTL]) - 1)
        return reply

    def error_extensions(
        self, destination: str, status: int | None, body: bytes, error: str, *, bare: bool
    ) -> dict[str, str]:
        """The `knativeerror*` extensions of a dead letter. `bare`: MT sends none for timeouts,
        and neither class for a reply that is no CloudEvent (event_dispatcher.go
        `dispatchExecutionInfoTransformers`); MT reports a connection error as 500 "dispatch
        error". MT cuts the base64 text of the body to 1 KiB, the Kafka broker the body."""
        if bare:
            return {}
        if status is None and self.mt:
            status, body = 500, DISPATCH_ERROR.encode()
        body = body or error.encode()
        data = (
            base64.b64encode(body).decode()[:ERROR_DATA_MAX]
            if self.mt
            else base64.b64encode(body[:ERROR_DATA_MAX]).decode()
        )
        found = {"knativeerrordest": destination, "knativeerrordata": data}
        if status is not None:
            found["knativeerrorcode"] = str(status)
        return found


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
