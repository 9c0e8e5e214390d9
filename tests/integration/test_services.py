"""Each backing service of the local stack answers a real protocol request."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pika
import psycopg2
import redis
from kafka import KafkaConsumer
from paho.mqtt.reasoncodes import ReasonCode
from pymongo import MongoClient

from devstack import wiring
from tests.support import s3_client

# What `make test` provisions: the domains' infrastructure under the e2e values (`up --values`).
INFRASTRUCTURE = wiring.load(wiring.ROOT / "tests" / "e2e" / "values-e2e.yaml").infrastructure()
TOPICS = INFRASTRUCTURE.topics


def test_postgres_answers_and_has_the_thermo_schema(stack_env: dict[str, str]) -> None:
    conn = psycopg2.connect(stack_env["DATABASE_URL"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            cur.execute(
                "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                ["thermo"],
            )
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_redis_answers_ping(stack_env: dict[str, str]) -> None:
    client = redis.Redis(
        host=stack_env["REDIS_HOST"],
        port=int(stack_env["REDIS_PORT"]),
        db=int(stack_env["REDIS_DB"]),
    )
    assert client.ping() is True


def test_rabbitmq_vhost_has_the_exchange(stack_env: dict[str, str]) -> None:
    params = pika.ConnectionParameters(
        host=stack_env["RABBITMQ_HOST"],
        port=int(stack_env["RABBITMQ_PORT"]),
        virtual_host=stack_env["RABBITMQ_VHOST"],
        credentials=pika.PlainCredentials(
            stack_env["RABBITMQ_USER"], stack_env["RABBITMQ_PASSWORD"]
        ),
    )
    connection = pika.BlockingConnection(params)
    try:
        # Passive: fails with 404 NOT_FOUND (closing the channel) unless the exchange exists.
        connection.channel().exchange_declare(stack_env["RABBITMQ_EXCHANGE"], passive=True)
    finally:
        connection.close()


def mqtt_connack(
    stack_env: dict[str, str],
    wait_for: Callable[..., object],
    username: str | None = None,
    password: str | None = None,
) -> ReasonCode:
    """CONNECT to the broker and return the CONNACK reason code."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    answers: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason)
    broker = urlsplit(stack_env["MQTT_BROKER_URL"])
    client.connect(broker.hostname or "127.0.0.1", broker.port or 1883)
    try:
        wait_for(lambda: client.loop(timeout=0.1) is not None and answers, what="a CONNACK")
    finally:
        client.disconnect()
    return answers[0]


def test_mqtt_accepts_the_configured_user(
    stack_env: dict[str, str], wait_for: Callable[..., object]
) -> None:
    reason = mqtt_connack(stack_env, wait_for, stack_env["MQTT_USER"], stack_env["MQTT_PASSWORD"])
    assert not reason.is_failure, str(reason)


def test_mqtt_rejects_anonymous_clients(
    stack_env: dict[str, str], wait_for: Callable[..., object]
) -> None:
    reason = mqtt_connack(stack_env, wait_for)
    assert reason.is_failure
    assert str(reason) == "Not authorized"


def test_kafka_has_every_topic_with_its_partitions(stack_env: dict[str, str]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert set(TOPICS) <= consumer.topics()
        partitions = {topic: len(consumer.partitions_for_topic(topic) or ()) for topic in TOPICS}
    finally:
        consumer.close()
    assert partitions == TOPICS


def test_minio_lists_the_buckets(stack_env: dict[str, str]) -> None:
    s3 = s3_client(stack_env)
    names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    expected = {value for key, value in stack_env.items() if key.endswith("_BUCKET")}
    assert expected == set(INFRASTRUCTURE.bucket_names)
    assert expected <= names


def test_ferretdb_pings_and_round_trips_a_document(stack_env: dict[str, str]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(
        stack_env["MONGODB_URI"], serverSelectionTimeoutMS=5000
    )
    with client:
        assert client.admin.command("ping")["ok"] == 1
        db = client.get_default_database()
        assert db.name == "runner_db"
        predictions = db["runner_predictions"]
        marker = uuid.uuid4().hex
        predictions.insert_one({"event_id": marker, "status": "predictable"})
        try:
            found = predictions.find_one({"event_id": marker})
            assert found is not None
            assert found["status"] == "predictable"
        finally:
            predictions.delete_one({"event_id": marker})
