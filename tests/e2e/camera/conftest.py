"""Fixtures and helpers of the camera e2e tests: cameras as MQTT clients, the announcement queue,
the dead-letter store and the MinIO adapter, all of the running runtime and its real services."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg2
import psycopg2.extras
import pytest
import requests

from devstack import wiring
from tests.camera_support import BoundQueue


@pytest.fixture
def camera_client(stack_env: dict[str, str]) -> Iterator[Callable[[], Any]]:
    """`camera_client()` -> a connected paho client, as a camera has one."""
    made: list[Any] = []

    def connect() -> Any:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.username_pw_set(stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
        client.connect("127.0.0.1", int(stack_env["MQTT_BROKER_URL"].rsplit(":", 1)[1]))
        client.loop_start()
        made.append(client)
        return client

    yield connect
    for client in made:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def queue(stack_env: dict[str, str]) -> Iterator[BoundQueue]:
    bound = BoundQueue(stack_env, ["raw.created", "processed.created"], durable=True)
    yield bound
    bound.close()


def uid() -> str:
    return f"cam-{uuid.uuid4().hex[:8]}"


def letters(env: dict[str, str], where: str, *args: Any) -> list[dict[str, Any]]:
    """Dead letters matching an SQL condition on objectflow.dead_letters."""
    with (
        psycopg2.connect(env["DATABASE_URL"]) as conn,
        conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
    ):
        cur.execute(f"SELECT * FROM objectflow.dead_letters WHERE {where} ORDER BY id", args)
        return [dict(row) for row in cur.fetchall()]


def chunk_letters(env: dict[str, str], field: str, value: str) -> list[tuple[int, str]]:
    """(status, detail) of the dead-lettered chunks whose payload has `field` == `value`."""
    found = letters(env, "cloudevent->'data'->>%s = %s", field, value)
    return [(row["status_code"], json.loads(row["response_body"])["detail"]) for row in found]


def notify(
    env: dict[str, str], values: wiring.Values, body: bytes | dict[str, Any]
) -> requests.Response:
    """POST a notification to the MinIO adapter as MinIO does (bearer token, JSON)."""
    port = values.ports()["minio-webhook"]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"http://127.0.0.1:{port}/",
        data=data,
        headers={
            "Authorization": f"Bearer {env['MINIO_WEBHOOK_TOKEN']}",
            "Content-Type": "application/json",
        },
        timeout=10,
    )
