"""e2e fixtures: the running local runtime (`objectflow up --values tests/e2e/values-e2e.yaml`)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from aiohttp import web
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from devstack import prometheus as local_prometheus
from devstack import wiring
from devstack.runtime import broker as broker_module
from tests.support import Prometheus

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


@pytest.fixture(scope="session")
def prometheus(values: wiring.Values) -> Prometheus:
    """The local Prometheus the e2e overlay starts (`local.prometheus.enabled`)."""
    api = Prometheus(local_prometheus.url(values.local.prometheus))
    try:
        api.targets()
    except requests.RequestException as exc:
        pytest.fail(f"no Prometheus at {api.url} ({exc!r}): objectflow up --values {OVERLAY}")
    return api


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


@pytest.fixture
def dead_letter_url(values: wiring.Values) -> str:
    return f"http://127.0.0.1:{values.ports()['dead-letter']}/"


@pytest.fixture
def class_broker(values: wiring.Values, dead_letter_url: str) -> Iterator[Callable[..., str]]:
    """`class_broker("Kafka")` -> the URL of a second local broker of that broker class, routing
    the running runtime's triggers (or `table`) to its running functions, dead letters to the
    running store (or `dead_letter`). The runtime's own broker has values' class."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    def start(
        broker_class: str,
        table: list[broker_module.Route] | None = None,
        dead_letter: str | None = None,
    ) -> str:
        broker = broker_module.Broker(
            broker_module.routes(values) if table is None else table,
            dead_letter or dead_letter_url,
            broker_class=broker_class,
        )
        runner = asyncio.run_coroutine_threadsafe(broker_module.serve(broker, 0), loop).result(10)
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/"

    yield start
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
