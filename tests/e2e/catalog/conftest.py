"""e2e fixtures of the image service: catalog-api's URL in the running runtime, a Kafka
producer playing Product Service, and a way to know catalog-products has handled records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from kafka import KafkaProducer

from devstack import wiring
from tests.catalog_support import ensure_bucket, sql


@pytest.fixture
def api_url(values: wiring.Values, broker: str, stack_env: dict[str, str]) -> str:
    ensure_bucket(stack_env)
    return f"http://127.0.0.1:{values.function_ports()['catalog-api']}"


def handled(values: wiring.Values) -> int:
    """Kafka records catalog-products has answered so far (any outcome), from its /metrics."""
    port = values.function_ports()["catalog-products"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("objectflow_events_total{")
            and 'function="catalog-products"' in line
            and 'type="dev.knative.kafka.event"' in line
        )
    )


@pytest.fixture
def product_service(stack_env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """`publish(topic, value, key=...)`: one record as Product Service sends it; its metadata."""
    producer = KafkaProducer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"])

    def publish(topic: str, value: Any, key: str | None = None, raw: bytes | None = None) -> Any:
        body = raw if raw is not None else json.dumps(value).encode()
        return producer.send(topic, key=key.encode() if key else None, value=body).get(30)

    yield publish
    producer.close()


def product_row(env: dict[str, str], product_id: str) -> list[tuple[Any, ...]]:
    return sql(
        env, "SELECT created_at, deleted_at FROM catalog.products WHERE product_id = %s", product_id
    )


def new_id() -> str:
    return str(uuid.uuid4())
