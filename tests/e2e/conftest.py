"""e2e fixtures: the running local runtime (`objectflow up --values tests/e2e/values-e2e.yaml`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from devstack import wiring

OVERLAY = Path(__file__).with_name("values-e2e.yaml")


@pytest.fixture(scope="session")
def values() -> wiring.Values:
    return wiring.load(OVERLAY)


@pytest.fixture(scope="session")
def broker(values: wiring.Values) -> str:
    url = f"http://127.0.0.1:{values.local.broker_port}/"
    routes = requests.get(f"{url}routes", timeout=5).json()
    if not any(r["function"].startswith("e2e-") for r in routes):
        pytest.fail(
            "the runtime does not run the e2e overlay: objectflow up --values " + str(OVERLAY)
        )
    return url


@pytest.fixture
def store(stack_env: dict[str, str]) -> redis.Redis:
    return redis.Redis(host=stack_env["REDIS_HOST"], port=int(stack_env["REDIS_PORT"]))


@pytest.fixture
def send(broker: str) -> Callable[..., requests.Response]:
    def send_event(event: CloudEvent) -> requests.Response:
        headers, body = to_binary(event)
        return requests.post(broker, headers=headers, data=body, timeout=5)

    return send_event


@pytest.fixture
def deliveries(store: redis.Redis) -> Callable[[str, str | None], list[dict[str, Any]]]:
    """What a test subscriber received, optionally only for one event id."""

    def read(function: str, event_id: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(raw) for raw in store.lrange(f"e2e:deliveries:{function}", 0, -1)]
        return [d for d in found if event_id is None or d["id"] == event_id]

    return read
