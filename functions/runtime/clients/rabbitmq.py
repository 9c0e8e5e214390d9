"""RabbitMQ (pika): persistent messages published with confirms, within the retry budget."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import TYPE_CHECKING, Any

from functions.runtime import settings
from functions.runtime.clients import core

if TYPE_CHECKING:
    import pika


def _transient() -> tuple[type[BaseException], ...]:
    import pika.exceptions as e

    return (e.AMQPConnectionError, e.AMQPChannelError, e.StreamLostError, e.NackError, OSError)


def _rejected(exc: BaseException) -> str | None:
    import pika.exceptions as e

    if isinstance(exc, e.ProbableAuthenticationError | e.AuthenticationError):
        return "RABBITMQ_USER/RABBITMQ_PASSWORD"
    if isinstance(exc, e.ProbableAccessDeniedError):
        return "RABBITMQ_VHOST"
    return None


class Publisher:
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

        core.within_budget(BACKEND, attempt)


@functools.cache
def _publisher() -> Publisher:
    return Publisher()


def publish(
    routing_key: str,
    body: bytes,
    *,
    exchange: str | None = None,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> None:
    """Publish to `exchange` (default `RABBITMQ_EXCHANGE`) and wait for the broker's confirm."""
    _publisher().publish(
        routing_key, body, exchange=exchange, headers=headers, message_id=message_id
    )


BACKEND = core.Backend(
    "rabbitmq",
    _transient,
    lambda: _publisher()._channel(),
    rejected=_rejected,
    caches=(_publisher.cache_clear,),
)
