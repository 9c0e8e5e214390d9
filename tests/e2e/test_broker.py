"""The local broker through the running runtime: filters, retries, dead letters, replies, order."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
import redis
import requests
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

from devstack.config import PATHS, read_env_file
from tests.conftest import DEVSTACK
from tests.support import wait_for

Deliveries = Callable[..., list[dict[str, Any]]]
SUBSCRIBERS = ("e2e-exact", "e2e-prefix", "e2e-suffix", "e2e-replies", "e2e-ordered")


def event(type_: str, source: str, data: dict[str, Any] | None = None, **attrs: str) -> CloudEvent:
    return CloudEvent(
        {"type": type_, "source": source, "id": str(uuid.uuid4()), **attrs}, data or {}
    )


def received_by(deliveries: Deliveries, event_id: str) -> set[str]:
    return {name for name in SUBSCRIBERS if deliveries(name, event_id)}


@pytest.mark.parametrize(
    ("type_", "source", "expected"),
    [
        ("objectflow.test.order.v1", "/shop", {"e2e-exact", "e2e-prefix"}),
        ("objectflow.test.other.v1", "/web/checkout", {"e2e-prefix", "e2e-suffix"}),
        ("objectflow.test.ignored.v1", "/checkout", {"e2e-prefix"}),  # `not` filter
        ("objectflow.other.v1", "/checkout", {"e2e-suffix"}),
    ],
)
def test_event_reaches_exactly_the_matching_functions(
    send: Callable[..., requests.Response],
    deliveries: Deliveries,
    type_: str,
    source: str,
    expected: set[str],
) -> None:
    ce = event(type_, source)
    assert send(ce).status_code == 202
    # Routing is decided when the broker accepts the event, so once the expected subscribers
    # have it, any other subscriber would have been attempted too.
    wait_for(
        lambda: received_by(deliveries, ce["id"]) >= expected, what=f"deliveries to {expected}"
    )
    assert received_by(deliveries, ce["id"]) == expected


def test_503_503_200_is_delivered_three_times_with_growing_delays(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    ce = event("objectflow.test.order.v1", "/shop", {"fail": [503, 503]})
    send(ce)
    got = wait_for(
        lambda: len(deliveries("e2e-exact", ce["id"])) >= 3 and deliveries("e2e-exact", ce["id"])
    )
    assert [d["attempt"] for d in got] == [1, 2, 3]
    first_gap, second_gap = got[1]["at"] - got[0]["at"], got[2]["at"] - got[1]["at"]
    assert first_gap >= 0.2  # the trigger's backoff-delay
    assert second_gap > first_gap  # exponential
    assert _dead_letters(ce["id"]) == []


def _dead_letters(event_id: str) -> list[dict[str, Any]]:
    url = read_env_file(PATHS)["DATABASE_URL"]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, destination, status_code, response_body, attempts, trigger_name,"
            " redriven_at FROM objectflow.dead_letters WHERE event_id = %s ORDER BY id",
            (event_id,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_400_is_dead_lettered_at_once_and_redrive_delivers_it_again(
    send: Callable[..., requests.Response], deliveries: Deliveries, store: redis.Redis
) -> None:
    ce = event("objectflow.test.order.v1", "/shop", {"broken": True})
    store.set(f"e2e:broken:{ce['id']}", 1)
    send(ce)
    rows = wait_for(
        lambda: len(_dead_letters(ce["id"])) == 2 and _dead_letters(ce["id"]), what="2 dead letters"
    )
    assert {r["trigger_name"] for r in rows} == {"e2e-exact", "e2e-prefix"}
    for row in rows:
        assert row["status_code"] == 400
        assert row["attempts"] == 1  # not retried
        assert "still broken" in row["response_body"]
    assert len(deliveries("e2e-exact", ce["id"])) == 1

    store.delete(f"e2e:broken:{ce['id']}")  # the function is fixed
    exact = next(r for r in rows if r["trigger_name"] == "e2e-exact")
    cli = [sys.executable, "-m", "devstack.cli", "dlq", "redrive", str(exact["id"])]
    done = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [d["attempt"] for d in deliveries("e2e-exact", ce["id"])] == [1, 2]
    redriven = {r["trigger_name"]: r["redriven_at"] for r in _dead_letters(ce["id"])}
    assert redriven["e2e-exact"] is not None and redriven["e2e-prefix"] is None


def test_reply_event_reaches_its_own_trigger(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    ce = event("objectflow.test.order.v1", "/shop", {"reply": "objectflow.test.replied.v1"})
    send(ce)
    replies = wait_for(lambda: deliveries("e2e-replies", f"reply-{ce['id']}"), what="the reply")
    assert replies[0]["data"] == {"in_reply_to": ce["id"]}
    assert replies[0]["type"] == "objectflow.test.replied.v1"


def test_ordered_trigger_keeps_order_per_partitionkey(
    send: Callable[..., requests.Response], deliveries: Deliveries
) -> None:
    key = f"cam-{uuid.uuid4().hex[:8]}"
    sent = []
    for seq in range(15):
        # The first one fails once: without ordering, the rest would overtake its retry.
        data = {"seq": seq, "fail": [503] if seq == 0 else []}
        ce = event("objectflow.test.sequence.v1", "/camera", data, partitionkey=key)
        assert send(ce).status_code == 202
        sent.append(ce["id"])

    def successful() -> list[str]:
        mine = [d for d in deliveries("e2e-ordered") if d["extensions"].get("partitionkey") == key]
        return [d["id"] for d in mine if not (d["id"] == sent[0] and d["attempt"] == 1)]

    wait_for(lambda: len(successful()) == len(sent), what="all ordered deliveries")
    assert successful() == sent


def test_ingress_accepts_structured_mode_and_rejects_non_cloudevents(broker: str) -> None:
    headers, body = to_structured(event("objectflow.test.other.v1", "/web"))
    assert requests.post(broker, headers=headers, data=body, timeout=5).status_code == 202
    rejected = requests.post(broker, json={"hello": "world"}, timeout=5)
    assert rejected.status_code == 400
    assert "not a valid CloudEvent" in rejected.json()["detail"]


def test_endpoints_file_lists_the_broker_and_every_function(values: Any) -> None:
    endpoints = json.loads((DEVSTACK / "endpoints.json").read_text())
    runtime = endpoints["runtime"]
    assert runtime["broker"] == f"http://127.0.0.1:{values.local.broker_port}/"
    assert set(values.functions) | {"dead-letter", "minio-webhook"} <= set(runtime["functions"])
    for function in runtime["functions"].values():
        assert requests.get(f"{function['url']}health", timeout=5).ok
