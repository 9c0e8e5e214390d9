"""The runtime's client factories against the real services, and credential errors."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from functions.runtime import clients, settings
from functions.runtime.errors import SettingsError


@pytest.fixture(autouse=True)
def fresh(service_env: dict[str, str]) -> None:
    settings.reset()
    clients.reset()


@pytest.mark.parametrize("dependency", sorted(clients.BACKENDS))
def test_every_dependency_answers(dependency: str) -> None:
    clients.probe(dependency)


def test_rabbitmq_publish_is_confirmed_and_routed() -> None:
    import pika

    cfg = settings.rabbitmq()
    params = pika.ConnectionParameters(
        cfg.host,
        cfg.port,
        cfg.vhost,
        pika.PlainCredentials(cfg.user, cfg.password.get_secret_value()),
    )
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, cfg.exchange, routing_key="test.clients")
        clients.rabbitmq.publish("test.clients", json.dumps({"n": 1}).encode(), message_id="m1")
        _method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert json.loads(body) == {"n": 1}
        assert properties.delivery_mode == 2 and properties.message_id == "m1"


def test_s3_client_error_is_not_retried_or_masked() -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        clients.s3.call(
            lambda s3: s3.head_object(Bucket="thermo-raw", Key=f"missing/{uuid.uuid4()}")
        )


@pytest.mark.parametrize(
    ("variable", "dependency", "setting"),
    [
        ("MINIO_ROOT_PASSWORD", "s3", "MINIO_SECRET_KEY/MINIO_ROOT_PASSWORD"),
        ("RABBITMQ_PASSWORD", "rabbitmq", "RABBITMQ_USER/RABBITMQ_PASSWORD"),
        ("MQTT_PASSWORD", "mqtt", "MQTT_USER/MQTT_PASSWORD"),
        ("DB_PASSWORD", "postgres", "DB_USER/DB_PASSWORD"),
    ],
)
def test_wrong_credential_names_the_setting(variable: str, dependency: str, setting: str) -> None:
    os.environ[variable] = "definitely-wrong"
    os.environ.pop("DATABASE_URL", None)
    with pytest.raises(SettingsError) as err:
        clients.probe(dependency)
    assert err.value.setting == setting
    assert "definitely-wrong" not in str(err.value)


def test_postgres_read_is_one_statement_and_leaves_the_pool_transactional() -> None:
    """`read` runs outside a transaction block (autocommit), and the connection it gives back
    opens transactions again for `transaction`, which still rolls back on error."""
    assert clients.postgres.read(lambda cur: (cur.execute("SELECT 1"), cur.fetchone())[1]) == (1,)
    in_block = clients.postgres.read(
        lambda cur: (cur.execute("SELECT now() = statement_timestamp()"), cur.fetchone())[1][0]
    )
    assert in_block is True  # autocommit: the statement is its own transaction
    table = f"test_read_{uuid.uuid4().hex[:12]}"
    clients.postgres.transaction(lambda cur: cur.execute(f"CREATE TABLE {table} (n int)"))
    try:
        for _ in range(settings.postgres().pool_max + 1):  # every pooled connection, read() first
            clients.postgres.read(lambda cur: cur.execute("SELECT 1"))

            def insert_then_fail(cur: object) -> None:
                cur.execute(f"INSERT INTO {table} VALUES (1)")  # type: ignore[attr-defined]
                raise RuntimeError("undo")

            with pytest.raises(RuntimeError):
                clients.postgres.transaction(insert_then_fail)
        count = clients.postgres.read(
            lambda cur: (cur.execute(f"SELECT count(*) FROM {table}"), cur.fetchone())[1][0]
        )
        assert count == 0
    finally:
        clients.postgres.transaction(lambda cur: cur.execute(f"DROP TABLE {table}"))
