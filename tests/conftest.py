"""Shared fixtures: environment isolation, the running stack's settings, condition waits."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.config import PATHS, read_env_file

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = ROOT / ".devstack"
TIERS = ("unit", "integration", "e2e", "chart", "fuzz")
# Domains: the function packages (functions/<domain>/); everything else is "platform" (the
# shared runtime, devstack, the chart). Test files named after no domain but testing one:
DOMAIN_OF_FILE = {"kafka_source": "sources", "mqtt_bridge": "sources", "minio_webhook": "sources",
                  "ping": "sources"}  # fmt: skip
NOT_DOMAINS = {"runtime", "migrations"}


def domains() -> set[str]:
    packages = {p.parent.name for p in (ROOT / "functions").glob("*/__init__.py")}
    return packages - NOT_DOMAINS


def domain_of(parts: tuple[str, ...]) -> str:
    """tests/<tier>/<domain>/... -> <domain>; tests/<tier>/test_<domain>[_...].py -> <domain>."""
    if len(parts) > 2:
        return parts[1]
    name = Path(parts[-1]).stem.removeprefix("test_")
    known = domains()
    if name in known:
        return name
    if name in DOMAIN_OF_FILE:
        return DOMAIN_OF_FILE[name]
    return next((d for d in sorted(known) if name.startswith(f"{d}_")), "platform")


def pytest_configure(config: pytest.Config) -> None:
    """Register every domain marker (pyproject lists today's; a new functions/<domain>/ or
    tests/<tier>/<domain>/ folder needs no edit there)."""
    registered = {line.split(":")[0] for line in config.getini("markers")}
    folders = {p.name for tier in TIERS for p in (ROOT / "tests" / tier).glob("*/") if p.is_dir()}
    for domain in sorted((domains() | folders | {"platform"}) - registered - {"__pycache__"}):
        config.addinivalue_line("markers", f"{domain}: tests of the {domain} domain")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (its folder under tests/) and its domain (a folder
    tests/<tier>/<domain>/, else the file name test_<domain>.py, else platform)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
            item.add_marker(getattr(pytest.mark, domain_of(parts)))


@pytest.fixture(autouse=True)
def isolated_env() -> Iterator[None]:
    """Every test starts from the environment the run began with and cannot leak changes."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Functions configure JSON logging on first request; undo it so no test inherits a
    handler bound to another test's captured stderr."""
    from functions.runtime import logging as objectflow_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    objectflow_logging.configure.cache_clear()


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """Endpoints and credentials of the running stack, as `make up` wrote them."""
    if not PATHS.env_file.exists():
        pytest.fail(f"{PATHS.env_file} is missing: run `make up` first (make test does)")
    return read_env_file(PATHS)


@pytest.fixture
def service_env(stack_env: dict[str, str]) -> dict[str, str]:
    """Apply the stack's settings to os.environ for this test (undone by isolated_env)."""
    os.environ.update(stack_env)
    return stack_env


@pytest.fixture
def wait_for() -> Callable[..., object]:
    from tests.support import wait_for as _wait_for

    return _wait_for
