"""OTA e2e fixtures: the running runtime's ota-api, and registered devices and a firmware."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
import requests

from devstack import wiring
from tests.ota_support import ensure_bucket, unique


@pytest.fixture(scope="session")
def ota_api(values: wiring.Values, stack_env: dict[str, str]) -> str:
    ensure_bucket(stack_env)
    url = f"http://127.0.0.1:{values.ports()['ota-api']}"
    requests.get(f"{url}/health", timeout=5).raise_for_status()
    return url


@pytest.fixture(scope="session")
def ota_reports(values: wiring.Values, stack_env: dict[str, str]) -> str:
    url = f"http://127.0.0.1:{values.ports()['ota-reports']}"
    requests.get(f"{url}/health", timeout=5).raise_for_status()
    return url


@pytest.fixture
def firmware(ota_api: str) -> str:
    version = unique("fw")
    response = requests.put(f"{ota_api}/firmwares/{version}", data=os.urandom(2048), timeout=10)
    assert response.status_code == 201, response.text
    return version


@pytest.fixture
def devices(ota_api: str) -> Callable[[int], list[str]]:
    def register(count: int, timezone: str = "Europe/Berlin") -> list[str]:
        made = [unique("dev") for _ in range(count)]
        for device_id in made:
            response = requests.put(
                f"{ota_api}/devices/{device_id}",
                timeout=10,
                json={"model": "tx-1", "timezone": timezone},
            )
            assert response.status_code == 201, response.text
        return made

    return register


@pytest.fixture
def mqtt_env(service_env: dict[str, str]) -> Iterator[None]:
    """This process's settings from the stack's env (tests.ota_support.Commands connects by
    them)."""
    from functions.runtime import clients, settings

    settings.reset()
    clients.reset()
    yield
    settings.reset()


@pytest.fixture
def mqtt_client(stack_env: dict[str, str]) -> Iterator[mqtt.Client]:
    """A connected publisher (the stack's device user), reconnecting after a broker restart."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-{uuid.uuid4().hex}")
    client.username_pw_set(stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()
