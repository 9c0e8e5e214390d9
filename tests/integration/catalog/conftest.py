"""catalog-api in-process (functions-framework's ASGI app) against the real services."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.catalog import objects
from functions.runtime import clients, settings
from tests.catalog_support import ensure_bucket
from tests.support import RecordingSink, http_app

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def broker_sink() -> Iterator[RecordingSink]:
    with RecordingSink() as recording:
        yield recording


@pytest.fixture
def catalog_env(service_env: dict[str, str], broker_sink: RecordingSink) -> dict[str, str]:
    os.environ["OBJECTFLOW_RETRY_BASE_DELAY"] = "0.01"
    os.environ["K_SINK"] = broker_sink.url
    settings.reset()
    clients.reset()
    objects.signer.cache_clear()
    ensure_bucket(service_env)
    return service_env


@pytest.fixture
def api(catalog_env: dict[str, str]) -> Any:
    source = ROOT / "functions" / "catalog" / "api.py"
    with http_app(source, "catalog_api") as client:
        yield client
