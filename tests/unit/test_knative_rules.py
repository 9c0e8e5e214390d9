"""Where Knative's broker classes differ (devstack/runtime/knative.py), without servers; the e2e
tier (tests/e2e/test_knative_parity.py) holds the same rules through the running runtime."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cloudevents.http import CloudEvent
from multidict import CIMultiDict

from devstack import wiring
from devstack.runtime import knative
from devstack.runtime.broker import Attempt, Broker, Route

MT, KAFKA = knative.Rules("MTChannelBasedBroker"), knative.Rules("Kafka")


def event(**attrs: str) -> CloudEvent:
    return CloudEvent({"type": "t", "source": "/s", **attrs}, {"n": 1})


def test_mt_stamps_arrival_and_255_hops_and_each_reply_uses_one() -> None:
    first = event()
    MT.arrived(first)
    assert first[knative.TTL] == "255" and knative.ARRIVAL in first.get_attributes()
    assert knative.TTL not in MT.for_subscriber(first).get_attributes()
    reply = MT.reply_to(event(), first)
    assert reply[knative.TTL] == "254"
    assert MT.expired(event(knativebrokerttl="0"))
    assert not MT.expired(reply)


def test_the_kafka_class_has_no_ttl_nor_arrival_time() -> None:
    plain = event()
    KAFKA.arrived(plain)
    assert knative.TTL not in plain.get_attributes()
    assert knative.ARRIVAL not in plain.get_attributes()
    assert not KAFKA.expired(event(knativebrokerttl="0"))


def test_error_data_is_cut_as_each_class_cuts_it() -> None:
    body = b"x" * 2000
    mt = MT.error_extensions("http://f/", 400, body, "", bare=False)["knativeerrordata"]
    kafka = KAFKA.error_extensions("http://f/", 400, body, "", bare=False)["knativeerrordata"]
    assert len(mt) == 1024 and base64.b64decode(mt) == b"x" * 768
    assert base64.b64decode(kafka) == b"x" * 1024


def test_mt_reports_no_answer_as_500_dispatch_error_and_bare_letters_carry_nothing() -> None:
    found = MT.error_extensions("http://f/", None, b"", "ClientConnectorError", bare=False)
    assert found["knativeerrorcode"] == "500"
    assert base64.b64decode(found["knativeerrordata"]) == b"dispatch error"
    assert MT.error_extensions("http://f/", 200, b"ok", "", bare=True) == {}


@pytest.mark.parametrize(
    ("broker_class", "status", "attempts"), [("MTChannelBasedBroker", 502, 3), ("Kafka", 200, 1)]
)
def test_a_2xx_whose_body_is_no_cloudevent_fails_as_the_class_does(
    broker_class: wiring.BrokerClass, status: int, attempts: int
) -> None:
    delivery = wiring.Delivery(retry=2, backoff_delay="PT0S", dead_letter=False)
    route = Route(wiring.Trigger(name="t", filters=[wiring.Filter(exact={"type": "t"})]), "f",
                  "http://127.0.0.1:9/", delivery)  # fmt: skip
    sent: list[int] = []

    async def answer(*_args: object) -> Attempt:
        sent.append(1)
        return Attempt(200, b"thanks", {"Content-Type": "text/plain"})

    async def no_sleep(_seconds: float) -> None:
        return None

    broker = Broker([route], None, sleep=no_sleep, broker_class=broker_class)
    broker._send = answer  # type: ignore[method-assign]
    judged = broker._judged(Attempt(200, b"thanks", {"Content-Type": "text/plain"}))
    assert judged.invalid_reply and not judged.ok and judged.status == status
    asyncio.run(broker._deliver_now(route, event(), ({}, b""), 0.0))
    assert len(sent) == attempts
    assert broker._judged(Attempt(204)).ok  # an empty body is a plain ack


def test_the_ingress_refuses_json_that_only_looks_like_a_cloudevent_and_kafka_sized_events() -> (
    None
):
    mt, kafka = Broker([], None), Broker([], None, broker_class="Kafka")
    looks = CIMultiDict({"Content-Type": "application/json"})
    refused = mt._refusal(looks, b'{"specversion": "1.0"}')
    assert refused is not None and refused.status == 400
    binary = CIMultiDict({"ce-specversion": "1.0"})
    assert mt._refusal(binary, b"x" * (2 * 1024 * 1024)) is None
    big = kafka._refusal(binary, b"x" * (1024 * 1024 + 1))
    assert big is not None and big.status == 503
