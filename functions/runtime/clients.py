"""Client factories reused across invocations, and the retry budget for calling them.

Every client is built on first use and cached for the life of the process; heavy libraries
are imported only inside the factory, so a function loads just the clients it uses.

`call(dependency, fn)` runs `fn` under the runtime's retry budget (tenacity: exponential
backoff with jitter). Transient failures that outlast the budget become
`DependencyUnavailable` (503, the broker retries later); a credential the service rejects
becomes a `SettingsError` naming the variable to fix, because retrying cannot help.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from functions.runtime import settings
from functions.runtime.errors import DependencyUnavailable, SettingsError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt_client
    import pika
    import pymongo
    import redis as redis_lib
    from kafka import KafkaProducer
    from mypy_boto3_s3 import S3Client
    from psycopg2.extensions import connection as PgConnection
    from psycopg2.pool import ThreadedConnectionPool

T = TypeVar("T")
log = logging.getLogger("objectflow.clients")


# --- what counts as transient, and which setting a rejection points at --------------------


def _postgres_transient() -> tuple[type[BaseException], ...]:
    import psycopg2

    return (psycopg2.OperationalError, psycopg2.InterfaceError)


def _postgres_rejected(exc: BaseException) -> str | None:
    text = str(exc)
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return settings.postgres().credential_settings
    if "database" in text and "does not exist" in text:
        return "DB_NAME"
    return None


def _redis_transient() -> tuple[type[BaseException], ...]:
    import redis.exceptions as e

    return (e.ConnectionError, e.TimeoutError, e.BusyLoadingError)


def _redis_rejected(exc: BaseException) -> str | None:
    import redis.exceptions as e

    if isinstance(exc, e.AuthenticationError | e.AuthenticationWrongNumberOfArgsError):
        return "REDIS_PASSWORD"
    if isinstance(exc, e.ResponseError) and "NOAUTH" in str(exc):
        return "REDIS_PASSWORD"
    return None


def _s3_transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as e

    return (
        e.EndpointConnectionError,
        e.ConnectionClosedError,
        e.ReadTimeoutError,
        e.ConnectTimeoutError,
        _S3ServerError,
    )


class _S3ServerError(Exception):
    """A 5xx answer from the object store (raised by `s3_call` so tenacity can retry it)."""


def _s3_rejected(exc: BaseException) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    if code == "InvalidAccessKeyId":
        return "MINIO_ACCESS_KEY/MINIO_ROOT_USER"
    if code == "SignatureDoesNotMatch":
        return "MINIO_SECRET_KEY/MINIO_ROOT_PASSWORD"
    return None


def _rabbit_transient() -> tuple[type[BaseException], ...]:
    import pika.exceptions as e

    return (e.AMQPConnectionError, e.AMQPChannelError, e.StreamLostError, e.NackError, OSError)


def _rabbit_rejected(exc: BaseException) -> str | None:
    import pika.exceptions as e

    if isinstance(exc, e.ProbableAuthenticationError | e.AuthenticationError):
        return "RABBITMQ_USER/RABBITMQ_PASSWORD"
    if isinstance(exc, e.ProbableAccessDeniedError):
        return "RABBITMQ_VHOST"
    return None


def _kafka_transient() -> tuple[type[BaseException], ...]:
    import kafka.errors as e

    return (e.KafkaConnectionError, e.KafkaTimeoutError, e.BrokerNotAvailableError)


def _mqtt_transient() -> tuple[type[BaseException], ...]:
    return (OSError, MqttUnavailable)


class MqttUnavailable(Exception):
    """The MQTT broker did not accept the connection or the publish in time."""


class MqttRejected(Exception):
    """The MQTT broker refused our credentials (CONNACK not authorised / bad user or password)."""


def _mqtt_rejected(exc: BaseException) -> str | None:
    return "MQTT_USER/MQTT_PASSWORD" if isinstance(exc, MqttRejected) else None


def _mongo_transient() -> tuple[type[BaseException], ...]:
    import pymongo.errors as e

    return (e.ConnectionFailure, e.ServerSelectionTimeoutError, e.AutoReconnect)


def _mongo_rejected(exc: BaseException) -> str | None:
    import pymongo.errors as e

    if isinstance(exc, e.OperationFailure) and exc.code in (13, 18):  # unauthorized, auth failed
        return "MONGODB_URI"
    return None


@dataclass(frozen=True)
class Dependency:
    name: str
    transient: Callable[[], tuple[type[BaseException], ...]]
    rejected: Callable[[BaseException], str | None] = lambda exc: None


DEPENDENCIES = {
    d.name: d
    for d in (
        Dependency("postgres", _postgres_transient, _postgres_rejected),
        Dependency("redis", _redis_transient, _redis_rejected),
        Dependency("s3", _s3_transient, _s3_rejected),
        Dependency("rabbitmq", _rabbit_transient, _rabbit_rejected),
        Dependency("kafka", _kafka_transient),
        Dependency("mqtt", _mqtt_transient, _mqtt_rejected),
        Dependency("mongodb", _mongo_transient, _mongo_rejected),
    )
}


def call(dependency: str, fn: Callable[[], T]) -> T:
    """Run `fn` against `dependency` within the retry budget (see module docstring)."""
    dep = DEPENDENCIES[dependency]
    transient = dep.transient()
    budget = settings.runtime()

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, transient) and dep.rejected(exc) is None

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(budget.retry_attempts),
        wait=tenacity.wait_random_exponential(
            multiplier=budget.retry_base_delay, max=budget.retry_max_delay
        ),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=lambda state: log.warning(
            "%s call failed, retrying",
            dependency,
            extra={
                "attempt": state.attempt_number,
                "error": repr(state.outcome and state.outcome.exception()),
            },
        ),
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as exc:
        setting = dep.rejected(exc)
        if setting is not None:
            raise SettingsError(setting, f"rejected by {dependency}: {_first_line(exc)}") from exc
        if isinstance(exc, transient):
            raise DependencyUnavailable(dependency, _first_line(exc)) from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- factories ------------------------------------------------------------------------


@functools.cache
def postgres_pool() -> ThreadedConnectionPool:
    from psycopg2.pool import ThreadedConnectionPool

    cfg = settings.postgres()
    # minconn=0: creating the pool never connects, so an outage surfaces on first use.
    return ThreadedConnectionPool(0, cfg.pool_max, dsn=cfg.dsn, connect_timeout=3)


@contextlib.contextmanager
def postgres_connection() -> Iterator[PgConnection]:
    """A pooled connection as one transaction: commit on success, roll back on error.

    A connection that broke (server restarted) is closed instead of returned to the pool.
    """
    import psycopg2

    pool = postgres_pool()
    conn = pool.getconn()
    broken = False
    try:
        yield conn
        conn.commit()
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        broken = True
        raise
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise
    finally:
        pool.putconn(conn, close=broken or bool(conn.closed))


@functools.cache
def redis() -> redis_lib.Redis:
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    cfg = settings.redis()
    return redis_lib.Redis(
        host=cfg.host,
        port=cfg.port,
        db=cfg.db,
        password=cfg.password.get_secret_value() if cfg.password else None,
        socket_timeout=5,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),  # the retry budget lives in `call`, not in the client
        health_check_interval=30,
    )


@functools.cache
def s3() -> S3Client:
    import boto3
    from botocore.config import Config

    cfg = settings.minio()
    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint,
        aws_access_key_id=cfg.access_key,
        aws_secret_access_key=cfg.secret_key.get_secret_value(),
        region_name=cfg.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def s3_call(fn: Callable[[S3Client], T]) -> T:
    """Call the object store within the retry budget; 5xx answers count as transient."""
    from botocore.exceptions import ClientError

    def attempt() -> T:
        try:
            return fn(s3())
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:
                raise _S3ServerError(_first_line(exc)) from exc
            raise

    return call("s3", attempt)


class RabbitPublisher:
    """Publishes persistent messages with publisher confirms, one connection per thread.

    pika's BlockingConnection is not thread-safe and functions-framework serves requests on
    a thread pool, hence the thread-local connection. A broken connection is dropped and
    rebuilt on the next attempt.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel
        import pika

        cfg = settings.rabbitmq()
        params = pika.ConnectionParameters(
            host=cfg.host,
            port=cfg.port,
            virtual_host=cfg.vhost,
            credentials=pika.PlainCredentials(cfg.user, cfg.password.get_secret_value()),
            connection_attempts=1,
            socket_timeout=3,
            blocked_connection_timeout=5,
            heartbeat=30,
        )
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        channel.confirm_delivery()
        self._local.connection, self._local.channel = connection, channel
        return channel

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = self._local.channel = None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm; raises after the retry budget."""
        import pika

        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            headers=headers,
            message_id=message_id,
        )

        def attempt() -> None:
            try:
                self._channel().basic_publish(
                    exchange=exchange if exchange is not None else settings.rabbitmq().exchange,
                    routing_key=routing_key,
                    body=body,
                    properties=properties,
                    mandatory=False,
                )
            except Exception:
                self._drop()
                raise

        call("rabbitmq", attempt)


@functools.cache
def rabbitmq() -> RabbitPublisher:
    return RabbitPublisher()


@functools.cache
def kafka_producer() -> KafkaProducer:
    from kafka import KafkaProducer

    cfg = settings.kafka()
    return KafkaProducer(
        bootstrap_servers=cfg.servers,
        client_id=cfg.client_id,
        acks="all",
        linger_ms=5,
        retries=0,  # the retry budget lives in `call`
        request_timeout_ms=5000,
        max_block_ms=5000,
    )


class MqttPublisher:
    """A connected paho client with its network loop on a background thread."""

    def __init__(self, client: mqtt_client.Client) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, timeout: float = 5.0) -> None:
        def attempt() -> None:
            info = self.client.publish(topic, payload, qos=qos)
            info.wait_for_publish(timeout=timeout)
            if not info.is_published():
                raise MqttUnavailable(f"publish to {topic} not acknowledged in {timeout}s")

        call("mqtt", attempt)


def connect_mqtt(
    client_id: str = "",
    *,
    clean_start: bool = True,
    timeout: float = 5.0,
    manual_ack: bool = False,
    on_message: Callable[..., None] | None = None,
) -> Any:
    """A new connected paho client (MQTT 3.1.1); raises MqttRejected on bad credentials.

    `on_message` is set before connecting: a persistent session delivers queued messages
    right after CONNACK, and paho drops (never acks) messages that arrive without a callback.
    """
    import paho.mqtt.client as mqtt

    cfg = settings.mqtt()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_start,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    client.on_message = on_message
    if cfg.user:
        client.username_pw_set(cfg.user, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls:
        client.tls_set()
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        outcome["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    client.connect(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise MqttUnavailable(f"no CONNACK from {cfg.host}:{cfg.port} within {timeout}s")
    reason = outcome["reason"]
    if reason.is_failure:
        client.loop_stop()
        client.disconnect()
        if reason.value in (4, 5, 134, 135):  # bad user/password, not authorised
            raise MqttRejected(str(reason))
        raise MqttUnavailable(str(reason))
    return client


@functools.cache
def mqtt() -> MqttPublisher:
    return MqttPublisher(call("mqtt", connect_mqtt))


@functools.cache
def mongo() -> pymongo.MongoClient[dict[str, Any]]:
    import pymongo

    cfg = settings.mongo()
    return pymongo.MongoClient(
        cfg.uri.get_secret_value(), serverSelectionTimeoutMS=3000, connectTimeoutMS=2000
    )


# --- probes: one real protocol request per dependency (used by `objectflow check`) -----------


def _probe_postgres() -> None:
    with postgres_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


def _probe_mqtt() -> None:
    connect_mqtt().disconnect()


def _probe_kafka() -> None:
    producer = kafka_producer()
    producer.partitions_for("job.events")


PROBES: dict[str, Callable[[], object]] = {
    "postgres": _probe_postgres,
    "redis": lambda: redis().ping(),
    "s3": lambda: s3().list_buckets(),
    "rabbitmq": lambda: rabbitmq()._channel(),
    "kafka": _probe_kafka,
    "mqtt": _probe_mqtt,
    "mongodb": lambda: mongo().admin.command("ping"),
}


def probe(dependency: str) -> None:
    """One real request to `dependency`; raises SettingsError or DependencyUnavailable."""
    call(dependency, PROBES[dependency])


FACTORIES = (postgres_pool, redis, s3, rabbitmq, kafka_producer, mqtt, mongo)


def reset() -> None:
    """Drop every cached client (tests switch environments and restart services)."""
    for factory in FACTORIES:
        factory.cache_clear()
