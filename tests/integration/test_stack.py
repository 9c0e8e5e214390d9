"""The `objectflow` CLI manages the running stack: status, restart after a crash, idempotent up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.conftest import DEVSTACK
from tests.support import E2E_OVERLAY

OBJECTFLOW = Path(sys.executable).with_name("objectflow")


def objectflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OBJECTFLOW), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def status() -> dict[str, dict[str, object]]:
    result = objectflow("status", "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def pids() -> dict[str, object]:
    return {name: row["pid"] for name, row in status().items()}


def up() -> None:
    result = objectflow("up", "--values", str(E2E_OVERLAY))
    assert result.returncode == 0, result.stdout + result.stderr


def test_status_reports_every_service_up() -> None:
    services = status()
    assert set(services) == {
        "postgres", "redis", "rabbitmq", "mosquitto", "kafka", "minio", "ferretdb", "runtime",
        "prometheus",  # the e2e values turn on the local Prometheus
    }  # fmt: skip
    for name, row in services.items():
        assert row["state"] == "up", name
        assert isinstance(row["pid"], int), name
        assert isinstance(row["port"], int), name
        assert Path(str(row["log"])).exists(), name


def test_a_killed_service_shows_down_and_up_restarts_it(
    stack_env: dict[str, str], wait_for: Callable[..., object]
) -> None:
    pid = int((DEVSTACK / "run" / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status()["redis"]["state"] == "down", timeout=10, what="redis down")

    up()

    row = status()["redis"]
    assert row["state"] == "up"
    assert row["pid"] != pid
    client = redis.Redis(host=stack_env["REDIS_HOST"], port=int(stack_env["REDIS_PORT"]))
    assert client.ping() is True


def test_a_second_up_is_quick_and_restarts_nothing() -> None:
    up()  # whatever earlier tests did, the stack is complete now
    before = pids()
    started = time.monotonic()
    up()
    elapsed = time.monotonic() - started
    print(f"second `objectflow up` took {elapsed:.2f}s")
    assert elapsed < 15
    assert pids() == before


def test_check_names_a_wrong_db_password(stack_env: dict[str, str]) -> None:
    result = objectflow("check", env={**os.environ, "DB_PASSWORD": "wrong"})
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    complaints = [line for line in output.splitlines() if "DB_PASSWORD" in line]
    assert len(complaints) == 1, output
    assert complaints[0].startswith("postgres:")


def test_check_passes_with_the_stack_settings(stack_env: dict[str, str]) -> None:
    result = objectflow("check", env={**os.environ, **stack_env})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert len(output.splitlines()) == 7
    assert all(line.endswith(": ok") for line in output.splitlines()), output


def test_up_restarts_a_service_whose_command_or_environment_changed() -> None:
    """How `up` moves a running FerretDB from SQLite to PostgreSQL: a service started from
    another command (or environment) is restarted; one started the same is left running."""
    import shutil
    import uuid

    from devstack import process
    from devstack.config import PATHS
    from devstack.services import ServiceSpec
    from devstack.stack import bring_up, fingerprint_file

    name, port = f"test-restart-{uuid.uuid4().hex[:8]}", process.free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    spec = ServiceSpec(name=name, port=port, command=command, needs=())
    changed_command = ServiceSpec(name, port, [*command, "--directory", "/"], needs=())
    changed_env = ServiceSpec(name, port, changed_command.command, needs=(), env={"X": "1"})
    steps: list[str] = []
    try:
        bring_up(spec, steps.append)
        first = process.our_pid(spec)
        assert bring_up(spec, steps.append).startswith("already up")
        assert process.our_pid(spec) == first

        bring_up(changed_command, steps.append)
        second = process.our_pid(spec)
        assert second not in (None, first)
        assert "restarting: its command or environment changed" in steps

        bring_up(changed_env, steps.append)
        third = process.our_pid(spec)
        assert third not in (None, second)

        # Started by an objectflow that recorded nothing: judged by its command line.
        fingerprint_file(spec).unlink()
        assert bring_up(changed_env, steps.append).startswith("already up")
        assert process.our_pid(spec) == third
        bring_up(spec, steps.append)
        assert process.our_pid(spec) not in (None, third)
    finally:
        process.stop(spec)
        fingerprint_file(spec).unlink(missing_ok=True)
        PATHS.log(name).unlink(missing_ok=True)
        shutil.rmtree(PATHS.data(name), ignore_errors=True)
