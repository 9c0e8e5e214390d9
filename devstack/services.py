"""One ServiceSpec per backing service: how to install, prepare, run and provision it.

Everything service-specific lives here (and in provision.py); starting, stopping and health checks
are generic (process.py) and read only these specs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import provision, wiring
from devstack.config import HOST, PATHS, STACK, Paths, Stack
from devstack.install import (
    APT,
    FERRETDB,
    KAFKA,
    MINIO,
    POSTGRES_BIN,
    RABBITMQ_SERVER,
    Requirement,
    run,
)

AS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    command: list[str]
    needs: tuple[Requirement, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # system user to run as
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 30.0
    stop_timeout: float = 20.0
    prepare: Callable[[], None] | None = None  # idempotent: configs each start, data init once
    provision: Callable[[], None] | None = None  # idempotent: users, buckets, topics...
    provision_inputs: object = None  # hashed into a marker in the data dir; a change re-provisions


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# The PostgreSQL database holding FerretDB's data (the MongoDB database `stack.mongo_db` is a
# schema inside it).
FERRETDB_DATABASE = "ferretdb"


def postgres_sockets(paths: Paths) -> Path:
    return paths.data("postgres") / "socket"


def provision_postgres(stack: Stack, paths: Paths) -> None:
    provision.postgres(stack, postgres_sockets(paths), (stack.db_name, FERRETDB_DATABASE))


def postgres(stack: Stack, paths: Paths) -> ServiceSpec:
    home = paths.data("postgres")
    pgdata, sockets = home / "pgdata", postgres_sockets(paths)
    user = "postgres" if AS_ROOT else None  # postgres refuses to run as root

    def prepare() -> None:
        sockets.mkdir(parents=True, exist_ok=True)
        if user:
            for path in (home, sockets):
                shutil.chown(path, user, user)
        if not (pgdata / "PG_VERSION").exists():
            # Local socket (in our data dir, mode 0700) trusts the postgres user, so provisioning
            # can always (re)set the password; TCP requires it.
            initdb: list[str | Path] = [
                POSTGRES_BIN / "initdb", "-D", pgdata, "-U", stack.db_user, "-E", "UTF8",
                "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
            ]  # fmt: skip
            run(initdb, "postgres initdb", user=user)

    command = [
        str(POSTGRES_BIN / "postgres"), "-D", str(pgdata), "-p", str(stack.ports["postgres"]),
        "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={sockets}",
    ]  # fmt: skip
    return ServiceSpec(
        name="postgres",
        port=stack.ports["postgres"],
        command=command,
        needs=(APT["postgresql"],),
        user=user,
        stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM would wait for every client to leave
        prepare=prepare,
        provision=lambda: provision_postgres(stack, paths),
        provision_inputs=[stack.db_user, stack.db_password, stack.db_name, FERRETDB_DATABASE],
    )


def redis(stack: Stack, paths: Paths) -> ServiceSpec:
    command = [
        "redis-server", "--bind", HOST, "--port", str(stack.ports["redis"]),
        "--dir", str(paths.data("redis")), "--daemonize", "no",
    ]  # fmt: skip
    return ServiceSpec(
        name="redis",
        port=stack.ports["redis"],
        command=command,
        needs=(APT["redis"],),
        start_timeout=10,
    )


def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbitmq(stack: Stack, paths: Paths) -> ServiceSpec:
    home = paths.data("rabbitmq")
    config, definitions = home / "rabbitmq.conf", home / "definitions.json"

    def prepare() -> None:
        # The broker imports these definitions at every boot: users, vhost and exchange are
        # declared, not provisioned by hand, so no rabbitmqctl round trips are needed.
        user, vhost = stack.admin_user, stack.rabbitmq_vhost
        write(
            definitions,
            json.dumps(
                {
                    "users": [
                        {
                            "name": user,
                            "password_hash": rabbitmq_password_hash(stack.admin_password),
                            "hashing_algorithm": "rabbit_password_hashing_sha256",
                            "tags": ["administrator"],
                        }
                    ],
                    "vhosts": [{"name": vhost}],
                    "permissions": [
                        {
                            "user": user,
                            "vhost": vhost,
                            "configure": ".*",
                            "write": ".*",
                            "read": ".*",
                        }
                    ],
                    "exchanges": [
                        {
                            "name": stack.rabbitmq_exchange,
                            "vhost": vhost,
                            "type": "topic",
                            "durable": True,
                            "auto_delete": False,
                            "internal": False,
                            "arguments": {},
                        }
                    ],
                },
                indent=2,
            ),
            mode=0o600,
        )
        write(
            config,
            f"listeners.tcp.default = {HOST}:{stack.ports['rabbitmq']}\n"
            f"load_definitions = {definitions}\n",
        )
        write(home / "enabled_plugins", "[].\n")

    return ServiceSpec(
        name="rabbitmq",
        port=stack.ports["rabbitmq"],
        command=[RABBITMQ_SERVER],
        needs=(APT["rabbitmq"],),
        env={
            "HOME": str(home),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": "objectflow@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(stack.ports["rabbitmq"]),
            "RABBITMQ_DIST_PORT": str(stack.rabbitmq_dist_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_LOGS": "-",  # to stdout, i.e. our log file
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,
        },
        start_timeout=60,
        prepare=prepare,
    )


def mosquitto(stack: Stack, paths: Paths) -> ServiceSpec:
    home = paths.data("mosquitto")
    config, passwords = home / "mosquitto.conf", home / "passwd"

    def prepare() -> None:
        write(
            config,
            f"listener {stack.ports['mosquitto']} {HOST}\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence true\n"
            f"persistence_location {home}/\n"
            # The MQTT bridge's session queues what it has not acknowledged yet; the default cap
            # (1000 messages) silently drops the rest of a burst, e.g. many cameras at once.
            "max_queued_messages 1000000\n"
            "log_dest stderr\n"
            # As root mosquitto would switch to the `mosquitto` user, who cannot read our files.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n",
        )
        passwords.unlink(missing_ok=True)
        run(
            ["mosquitto_passwd", "-b", "-c", passwords, stack.admin_user, stack.admin_password],
            "mosquitto_passwd",
        )
        passwords.chmod(0o600)

    return ServiceSpec(
        name="mosquitto",
        port=stack.ports["mosquitto"],
        command=["mosquitto", "-c", str(config)],
        needs=(APT["mosquitto"], APT["mosquitto-clients"]),
        start_timeout=10,
        prepare=prepare,
    )


def kafka(stack: Stack, paths: Paths, infrastructure: wiring.Infrastructure) -> ServiceSpec:
    home = paths.data("kafka")
    config, log4j, cluster_id = (
        home / "server.properties",
        home / "log4j.properties",
        home / "cluster.id",
    )
    classpath = f"{KAFKA.libs}/*"
    port, controller = stack.ports["kafka"], stack.kafka_controller_port

    def prepare() -> None:
        write(
            config,
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@{HOST}:{controller}\n"
            f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}\n"
            f"advertised.listeners=PLAINTEXT://{HOST}:{port}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={home / 'logs'}\n"
            "num.partitions=1\n"
            "offsets.topic.replication.factor=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n",
        )
        write(
            log4j,
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.controller=WARN\n"
            "log4j.logger.state.change.logger=WARN\n",
        )
        if not (home / "logs" / "meta.properties").exists():
            if not cluster_id.exists():  # Kafka's id format: url-safe base64 of 16 random bytes
                cluster_id.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22])
            format_storage: list[str | Path] = [
                "java", "-cp", classpath, f"-Dlog4j.configuration=file:{log4j}",
                "kafka.tools.StorageTool", "format", "-t", cluster_id.read_text().strip(),
                "-c", config,
            ]  # fmt: skip
            run(format_storage, "kafka storage format")

    command = [
        "java", "-Xmx512m", "-Xms512m", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}", "-cp", classpath, "kafka.Kafka", str(config),
    ]  # fmt: skip
    return ServiceSpec(
        name="kafka",
        port=port,
        command=command,
        needs=(APT["java"], APT["maven"], KAFKA),
        start_timeout=90,
        prepare=prepare,
        provision=lambda: provision.kafka(stack, infrastructure.topics),
        provision_inputs=infrastructure.topics,
    )


def minio(stack: Stack, paths: Paths, infrastructure: wiring.Infrastructure) -> ServiceSpec:
    home = paths.data("minio")
    command = [
        str(MINIO.path), "server", "--address", f"{HOST}:{stack.ports['minio']}",
        "--console-address", f"{HOST}:{stack.minio_console_port}",
        "--certs-dir", str(home / "certs"), str(home / "data"),
    ]  # fmt: skip
    return ServiceSpec(
        name="minio",
        port=stack.ports["minio"],
        command=command,
        needs=(MINIO,),
        env=stack.minio_env(paths),
        provision=lambda: provision.minio(stack, infrastructure),
        provision_inputs=[infrastructure.bucket_names, provision.minio_notifications()],
    )


def ferretdb(stack: Stack, paths: Paths, infrastructure: wiring.Infrastructure) -> ServiceSpec:
    """FerretDB on PostgreSQL: its pg handler turns equality filters (`{status: ...}`) and updates
    by `_id` into SQL jsonb filters, where the SQLite handler decodes the whole collection in Go
    and takes turns on one writer (bench/README.md, detections)."""
    backend = (
        f"postgres://{stack.db_user}:{stack.db_password}@{HOST}:{stack.ports['postgres']}"
        f"/{FERRETDB_DATABASE}"
    )
    command = [
        str(FERRETDB.path), f"--listen-addr={HOST}:{stack.ports['ferretdb']}",
        "--handler=postgresql", f"--state-dir={paths.data('ferretdb')}", "--telemetry=disable",
        "--debug-addr=-",
    ]  # fmt: skip
    return ServiceSpec(
        name="ferretdb",
        port=stack.ports["ferretdb"],
        command=command,
        needs=(FERRETDB,),
        env={"FERRETDB_POSTGRESQL_URL": backend},  # in the environment: keeps the password off ps
        # Before it starts, PostgreSQL must accept the URL: its provisioning (idempotent, retried
        # while PostgreSQL starts in its own row) sets the password and creates the database.
        prepare=lambda: provision_postgres(stack, paths),
        provision=lambda: provision.ferretdb(stack, infrastructure.collections),
        provision_inputs=[FERRETDB_DATABASE, stack.mongo_db, *infrastructure.collections],
    )


def specs(
    stack: Stack = STACK,
    paths: Paths = PATHS,
    infrastructure: wiring.Infrastructure | None = None,
) -> dict[str, ServiceSpec]:
    """The services; Kafka, MinIO and FerretDB provision `infrastructure` (default: what the
    domains of values.yaml declare)."""
    infrastructure = infrastructure or wiring.default().infrastructure()
    found = [build(stack, paths) for build in (postgres, redis, rabbitmq, mosquitto)]
    found += [build(stack, paths, infrastructure) for build in (kafka, minio, ferretdb)]
    return {spec.name: spec for spec in found}
