"""`objectflow check`: one real request per service with the settings functions would use.

Uses the functions' own settings and client probes (functions/runtime), so a line that says `ok`
means a function with this environment can reach that service. Keys missing from the process
environment come from `.devstack/env`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from devstack.config import PATHS, read_env_file

if TYPE_CHECKING:
    from functions.runtime.clients import Dependency

# dependency probed by functions.runtime.clients -> (service, settings that locate it)
PROBES: dict[Dependency, tuple[str, str]] = {
    "postgres": ("postgres", "DB_HOST/DB_PORT"),
    "redis": ("redis", "REDIS_HOST/REDIS_PORT"),
    "rabbitmq": ("rabbitmq", "RABBITMQ_HOST/RABBITMQ_PORT"),
    "mqtt": ("mosquitto", "MQTT_BROKER_URL"),
    "kafka": ("kafka", "KAFKA_BOOTSTRAP_SERVERS"),
    "s3": ("minio", "MINIO_ENDPOINT"),
    "mongodb": ("ferretdb", "MONGODB_URI"),
}


def postgres_variants() -> Iterator[str]:
    """Functions reach PostgreSQL by DB_* parts (watcher) or DATABASE_URL (ingestion): try both.

    The settings prefer DATABASE_URL when set, so the DB_* parts are checked with it unset.
    """
    database_url = os.environ.pop("DATABASE_URL", None)
    yield "DB_HOST/DB_PORT"
    if database_url is not None:
        os.environ["DATABASE_URL"] = database_url
        yield "DATABASE_URL"


def probe_once(name: Dependency) -> None:
    from functions.runtime import clients, settings

    settings.reset()
    clients.reset()
    clients.probe(name)


def check_one(name: Dependency) -> str:
    """Return `ok` or a one-line reason naming the setting to fix."""
    from functions.runtime.errors import DependencyUnavailable, ObjectflowError

    locations = postgres_variants() if name == "postgres" else iter([PROBES[name][1]])
    for location in locations:
        try:
            probe_once(name)
        except DependencyUnavailable as exc:
            return f"cannot reach it ({exc.detail}) — check {location}"
        except ObjectflowError as exc:  # SettingsError: its detail names the variable
            return exc.detail
        except Exception as exc:  # anything else: still one line, never a traceback
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return "ok"


def check() -> list[tuple[str, str]]:
    """Probe every service in turn; return (service, `ok` or reason) pairs."""
    for key, value in read_env_file(PATHS).items():
        os.environ.setdefault(key, value)
    return [(service, check_one(name)) for name, (service, _) in PROBES.items()]
