"""The one place for the local stack's defaults: ports, credentials, names and file locations.

`.devstack/env`, `.devstack/endpoints.json`, the service specs and provisioning all read from here,
so they cannot disagree.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from devstack.wiring import Infrastructure

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "objectflow"
# Resolved: a worktree's .devstack is a symlink to the main checkout's, and the services'
# commands (which name these paths) must read the same from every checkout, or each one's `up`
# would take them for changed and restart them (stack.bring_up).
STATE = (ROOT / ".devstack").resolve()
MINIO_WEBHOOK_TARGET = "OBJECTFLOW"  # MinIO's id for the notification target of the env below
MINIO_WEBHOOK_ARN = f"arn:minio:sqs::{MINIO_WEBHOOK_TARGET}:webhook"


@dataclass(frozen=True)
class Paths:
    """Where the stack keeps its state (inside the repo) and its downloads (outside it)."""

    state: Path = STATE
    cache: Path = CACHE

    def data(self, service: str) -> Path:
        return self.state / "data" / service

    def log(self, service: str) -> Path:
        return self.state / "logs" / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.state / "run" / f"{service}.pid"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    @property
    def endpoints_file(self) -> Path:
        return self.state / "endpoints.json"

    @property
    def bin(self) -> Path:
        return self.cache / "bin"

    def secret(self, name: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
        """A random token (`make`) made on first use and kept in .devstack/secrets (never in
        git)."""
        path = self.state / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # O_EXCL: two concurrent `objectflow` commands cannot write different tokens
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        token = make()
        with os.fdopen(fd, "w") as file:
            file.write(token)
        return token


def _ed25519_seed() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Stack:
    """Ports, credentials and names of the local stack (the replaced services' defaults)."""

    ports: dict[str, int] = field(
        default_factory=lambda: {
            "postgres": 5432,
            "redis": 6379,
            "rabbitmq": 5672,
            "mosquitto": 1883,
            "kafka": 9092,
            "minio": 9000,
            "ferretdb": 27017,
        }
    )
    kafka_controller_port: int = 9093
    rabbitmq_dist_port: int = 25672
    minio_console_port: int = 9001

    db_name: str = "thermosense_db"
    db_user: str = "postgres"
    db_password: str = "password"
    redis_db: int = 0
    admin_user: str = "admin"  # MinIO root, RabbitMQ and MQTT share one admin login
    admin_password: str = "admin1234"
    rabbitmq_vhost: str = "/thermo"
    rabbitmq_exchange: str = "thermo_exchange"
    # Buckets, topics and collections are not here: the domains of values.yaml declare them
    # (wiring.Values.infrastructure), and provisioning creates exactly those.
    mongo_db: str = "runner_db"

    def url(self, service: str) -> str:
        port = self.ports[service]
        user, password = self.admin_user, self.admin_password
        return {
            "postgres": (
                f"postgresql://{self.db_user}:{self.db_password}@{HOST}:{port}/{self.db_name}"
            ),
            "redis": f"redis://{HOST}:{port}/{self.redis_db}",
            "rabbitmq": f"amqp://{user}:{password}@{HOST}:{port}/{quote(self.rabbitmq_vhost, '')}",
            "mosquitto": f"mqtt://{HOST}:{port}",
            "kafka": f"{HOST}:{port}",
            "minio": f"http://{HOST}:{port}",
            "ferretdb": f"mongodb://{HOST}:{port}/{self.mongo_db}",
        }[service]

    def minio_env(self, paths: Paths | None = None) -> dict[str, str]:
        """The MinIO server's own environment: credentials and the webhook notification target.

        The target queues notifications in a directory until the adapter accepts them, so MinIO
        starts, and loses nothing, while the adapter is down.
        """
        from devstack import wiring

        paths = paths or PATHS
        port = wiring.default().ports()["minio-webhook"]  # platform.minio-webhook's local port
        target = MINIO_WEBHOOK_TARGET
        return {
            "MINIO_ROOT_USER": self.admin_user,
            "MINIO_ROOT_PASSWORD": self.admin_password,
            f"MINIO_NOTIFY_WEBHOOK_ENABLE_{target}": "on",
            f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}": f"http://{HOST}:{port}/",
            f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}": paths.secret("minio-webhook-token"),
            f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}": str(paths.data("minio") / "notify-queue"),
        }

    def env(
        self, paths: Paths | None = None, infrastructure: Infrastructure | None = None
    ) -> dict[str, str]:
        """The settings functions and tests read, under the env names functions/README.md lists;
        bucket names are the domains' (values.yaml `domains`)."""
        from devstack import wiring

        paths = paths or PATHS
        infrastructure = infrastructure or wiring.default().infrastructure()
        return {
            "DB_HOST": HOST,
            "DB_PORT": str(self.ports["postgres"]),
            "DB_NAME": self.db_name,
            "DB_USER": self.db_user,
            "DB_PASSWORD": self.db_password,
            "DATABASE_URL": self.url("postgres"),
            "REDIS_HOST": HOST,
            "REDIS_PORT": str(self.ports["redis"]),
            "REDIS_DB": str(self.redis_db),
            "MINIO_ENDPOINT": self.url("minio"),
            "MINIO_ROOT_USER": self.admin_user,
            "MINIO_ROOT_PASSWORD": self.admin_password,
            "MINIO_WEBHOOK_TOKEN": paths.secret("minio-webhook-token"),
            # an ed25519 seed (base64): ota-api signs firmwares with it, simulated devices check
            "OTA_FIRMWARE_SIGNING_KEY": paths.secret("ota-firmware-signing-key", _ed25519_seed),
            **infrastructure.buckets,
            "RABBITMQ_HOST": HOST,
            "RABBITMQ_PORT": str(self.ports["rabbitmq"]),
            "RABBITMQ_USER": self.admin_user,
            "RABBITMQ_PASSWORD": self.admin_password,
            "RABBITMQ_VHOST": self.rabbitmq_vhost,
            "RABBITMQ_EXCHANGE": self.rabbitmq_exchange,
            "RAW_ROUTING_KEY": "raw.created",
            "PROCESSED_ROUTING_KEY": "processed.created",
            "MQTT_BROKER_URL": self.url("mosquitto"),
            "MQTT_USER": self.admin_user,
            "MQTT_PASSWORD": self.admin_password,
            "KAFKA_BOOTSTRAP_SERVERS": self.url("kafka"),
            "MONGODB_URI": self.url("ferretdb"),
        }

    def endpoints(self, paths: Paths) -> dict[str, dict[str, dict[str, object]]]:
        return {
            "services": {
                name: {
                    "host": HOST,
                    "port": port,
                    "url": self.url(name),
                    "log": str(paths.log(name)),
                }
                for name, port in self.ports.items()
            }
        }

    def write_files(self, paths: Paths, infrastructure: Infrastructure | None = None) -> None:
        paths.state.mkdir(parents=True, exist_ok=True)
        env = self.env(paths, infrastructure)
        paths.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        paths.endpoints_file.write_text(json.dumps(self.endpoints(paths), indent=2) + "\n")


def read_env_file(paths: Paths) -> dict[str, str]:
    """The settings the last `up` wrote (empty before the first one)."""
    if not paths.env_file.exists():
        return {}
    lines = paths.env_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


STACK = Stack()
PATHS = Paths()
