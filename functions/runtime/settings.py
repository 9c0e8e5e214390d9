"""Typed settings per backend, read from the environment under the replaced services' names.

Each settings class is built on first use by a cached factory (never at import time), so a
function only validates the settings of the backends it actually uses. Validation failures
become a `SettingsError` naming the environment variable.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.runtime.errors import SettingsError

S = TypeVar("S", bound=BaseSettings)


class PostgresSettings(BaseSettings):
    """`DATABASE_URL` (ingestion service) wins over the `DB_*` parts (watcher service)."""

    model_config = SettingsConfigDict(env_prefix="DB_", extra="ignore")

    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    host: str = "localhost"
    port: int = Field(default=5432, gt=0, lt=65536)
    name: str = "thermosense_db"
    user: str = "postgres"
    password: SecretStr | None = None
    pool_max: int = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _needs_credentials(self) -> PostgresSettings:
        if self.database_url is None and self.password is None:
            raise ValueError("DB_PASSWORD (or DATABASE_URL) is required")
        if self.database_url is not None:
            scheme = urlsplit(self.database_url.get_secret_value()).scheme
            if scheme not in ("postgres", "postgresql"):
                raise ValueError("DATABASE_URL must start with postgresql://")
        return self

    @property
    def credential_settings(self) -> str:
        return "DATABASE_URL" if self.database_url is not None else "DB_USER/DB_PASSWORD"

    @property
    def dsn(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        password = self.password.get_secret_value() if self.password else ""
        return (
            f"postgresql://{quote(self.user)}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{self.name}"
        )


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")

    host: str = "localhost"
    port: int = Field(default=6379, gt=0, lt=65536)
    db: int = Field(default=0, ge=0)
    password: SecretStr | None = None


class MinioSettings(BaseSettings):
    """`MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY` take precedence over the root credentials."""

    model_config = SettingsConfigDict(env_prefix="MINIO_", extra="ignore")

    endpoint: str = "http://localhost:9000"
    access_key: str = Field(validation_alias=AliasChoices("MINIO_ACCESS_KEY", "MINIO_ROOT_USER"))
    secret_key: SecretStr = Field(
        validation_alias=AliasChoices("MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
    )
    region: str = "us-east-1"

    @model_validator(mode="after")
    def _endpoint_is_url(self) -> MinioSettings:
        if urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ValueError("MINIO_ENDPOINT must be an http:// or https:// URL")
        return self


class RabbitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RABBITMQ_", extra="ignore")

    host: str = "localhost"
    port: int = Field(default=5672, gt=0, lt=65536)
    user: str = "guest"
    password: SecretStr
    vhost: str = "/thermo"
    exchange: str = "thermo_exchange"


class MqttSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MQTT_", extra="ignore")

    broker_url: str = "mqtt://localhost:1883"
    user: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _url(self) -> MqttSettings:
        parts = urlsplit(self.broker_url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
            raise ValueError("MQTT_BROKER_URL must look like mqtt://host:1883")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.broker_url).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.broker_url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "objectflow"

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class MongoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MONGODB_", extra="ignore")

    uri: SecretStr = SecretStr("mongodb://localhost:27017/runner_db")
    database: str | None = None

    @property
    def database_name(self) -> str:
        return (
            self.database or urlsplit(self.uri.get_secret_value()).path.lstrip("/") or "runner_db"
        )


class RuntimeSettings(BaseSettings):
    """How the adapter behaves: retry budget, size limits, idempotency window, logs."""

    model_config = SettingsConfigDict(env_prefix="OBJECTFLOW_", extra="ignore")

    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_base_delay: float = Field(default=0.1, gt=0)
    retry_max_delay: float = Field(default=2.0, gt=0)
    max_event_bytes: int = Field(default=1024 * 1024, gt=0)
    # The pre-check only has to outlast redelivery: the broker's retries (minutes at most), MinIO
    # and MQTT resending after a short outage. The domain's own guards dedupe beyond it.
    idempotency_ttl: int = Field(default=3600, gt=0)
    log_level: str = "INFO"


def env_name(cls: type[BaseSettings], loc: str) -> str:
    """The environment variable(s) behind a validation error's location, for messages."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
        if loc == name or loc in choices:
            return "/".join(str(c) for c in choices) if choices else f"{prefix}{name}".upper()
    return f"{prefix}{loc}".upper()


def load(cls: type[S]) -> S:
    """Build a settings object, turning validation errors into one SettingsError."""
    try:
        return cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        if not field:  # a model validator: its message already names the variable
            raise SettingsError(message.split(" ")[0], message) from None
        got: Any = err.get("input")
        hint = "" if err["type"] == "missing" or "password" in field else f" (got {got!r})"
        raise SettingsError(env_name(cls, field), f"{message}{hint}") from None


_FACTORIES: list[functools._lru_cache_wrapper[Any]] = []


def cached(cls: type[S]) -> functools._lru_cache_wrapper[S]:
    """A cached factory for `cls`; `reset()` forgets what every such factory built."""
    factory = functools.cache(functools.partial(load, cls))
    factory.__doc__ = f"The process-wide {cls.__name__}, built on first use."
    _FACTORIES.append(factory)
    return factory


postgres = cached(PostgresSettings)
redis = cached(RedisSettings)
minio = cached(MinioSettings)
rabbitmq = cached(RabbitSettings)
mqtt = cached(MqttSettings)
kafka = cached(KafkaSettings)
mongo = cached(MongoSettings)
runtime = cached(RuntimeSettings)


def reset() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    for factory in _FACTORIES:
        factory.cache_clear()
