"""Helpers for tests: reading .devstack/env and waiting on conditions with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the condition may raise while a service comes back
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition!r}; last error: {last_error!r}"
    )


def stop_service(name: str) -> None:
    """Stop one real service of the local stack by its pid (as an outage would)."""
    from devstack.process import stop
    from devstack.services import specs

    stop(specs()[name])


def start_stack() -> None:
    """Bring every stopped service back, exactly as a user would: `objectflow up`."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "devstack.cli", "up"], check=True)
