"""ota-api served by functions-framework's ASGI app in-process, against the real services."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from functions.runtime import clients, settings
from tests.ota_support import ensure_bucket, ready_event, sql, unique
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


@pytest.fixture
def dispatcher(ota_env: dict[str, str]) -> Iterator[Any]:
    """ota-dispatcher's app in-process, with a fresh breaker and MQTT session per test and a
    rate-limit key of its own (the running runtime's dispatcher shares the default one)."""
    import functions_framework

    from functions.ota import dispatcher as module

    os.environ["OTA_DISPATCH_RATE_KEY"] = unique("ota:dispatch:test")
    settings.reset()
    module.channel.cache_clear()
    source = str(ROOT / "functions" / "ota" / "dispatcher.py")
    yield functions_framework.create_app("ota_dispatcher", source, "http").test_client()
    module.channel().close()
    module.channel.cache_clear()


@pytest.fixture
def ready_job(api: Any, firmware: str, device: Callable[..., str], ota_env: dict[str, str]):
    """A job made ready without a job.ready_to_execute outbox row, so the running runtime's
    dispatcher never sees it: the test hands the event to its in-process dispatcher. Returns
    the event's data (the record value the relay would have published)."""

    def make(device_id: str | None = None) -> dict[str, Any]:
        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        device_id = device_id or device()
        body = {"device_id": device_id, "firmware_version": firmware, "schedule_time": later}
        created = api.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        sql(
            ota_env,
            "UPDATE ota.jobs SET status = 'ready', version = version + 1 WHERE id = %s",
            (job_id,),
        )
        return ready_event(api.get(f"/jobs/{job_id}").json())

    return make
