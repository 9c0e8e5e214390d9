"""ota-api served by functions-framework's ASGI app in-process, against the real services."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.runtime import clients, settings
from tests.ota_support import ensure_bucket, unique
from tests.support import http_app

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def ota_env(service_env: dict[str, str]) -> dict[str, str]:
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    settings.reset()
    clients.reset()
    ensure_bucket(service_env)
    return service_env


@pytest.fixture
def api(ota_env: dict[str, str]) -> Iterator[Any]:
    with http_app(ROOT / "functions" / "ota" / "api.py", "ota_api") as client:
        yield client


@pytest.fixture
def firmware(api: Any) -> str:
    """A firmware version that exists (its bytes are unique to the test)."""
    version = unique("fw")
    response = api.put(
        f"/firmwares/{version}",
        content=os.urandom(1024),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return version


@pytest.fixture
def device(api: Any) -> Callable[..., str]:
    def register(timezone: str = "Europe/Berlin") -> str:
        device_id = unique("dev")
        response = api.put(f"/devices/{device_id}", json={"model": "tx-1", "timezone": timezone})
        assert response.status_code == 201, response.text
        return device_id

    return register
