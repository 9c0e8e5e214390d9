"""Typed settings per backend, read from the environment under the replaced services' names.

Each settings class is built on first use by a cached factory (never at import time), so a
function only validates the settings of the backends it actually uses. Validation failures
become a `SettingsError` naming the environment variable.

The runtime's own classes read the environment through `EnvSettings`, a plain pydantic model:
importing pydantic-settings costs a cold start about 0.15 s (its sources import cloud SDK hooks
and argparse), and these classes only need prefixed, case-insensitive names and aliases. A
domain's settings may still be pydantic-settings classes; `load` and `cached` take both.
"""

from __future__ import annotations

import functools
import os
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from functions.runtime.errors import SettingsError

S = TypeVar("S", bound=BaseModel)


class EnvSettings(BaseModel):
    """Fields read from the environment as pydantic-settings' BaseSettings reads them here:
    `env_prefix` + the field's name, or its validation alias(es), case-insensitively; other
    variables are ignored."""

    model_config = ConfigDict(extra="ignore")
    env_prefix: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        environ = {name.lower(): value for name, value in os.environ.items()}
        found = {
            key: environ[variable.lower()]
            for name, info in type(self).model_fields.items()
            for variable, key in _variables(type(self), name, info.validation_alias)
            if variable.lower() in environ
        }
        super().__init__(**{**found, **values})


def _variables(cls: type[BaseModel], name: str, alias: object) -> list[tuple[str, str]]:
    """(environment variable, input key) pairs of field `name`: its alias choices as they are
    (pydantic takes the first one present), else the prefixed name for the field's own name."""
    if isinstance(alias, AliasChoices):
        return [(str(choice), str(choice)) for choice in alias.choices]
    if alias:
        return [(str(alias), str(alias))]
    return [(f"{_prefix(cls)}{name}", name)]


def _prefix(cls: type[BaseModel]) -> str:
    return getattr(cls, "env_prefix", "") or str(cls.model_config.get("env_prefix", ""))


class PostgresSettings(EnvSettings):
    """`DATABASE_URL` (ingestion service) wins over the `DB_*` parts (watcher service)."""

    env_prefix = "DB_"

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


class RedisSettings(EnvSettings):
    env_prefix = "REDIS_"

    host: str = "localhost"
    port: int = Field(default=6379, gt=0, lt=65536)
    db: int = Field(default=0, ge=0)
    password: SecretStr | None = None


class MinioSettings(EnvSettings):
    """`MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY` take precedence over the root credentials."""

    env_prefix = "MINIO_"

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


class RabbitSettings(EnvSettings):
    env_prefix = "RABBITMQ_"

    host: str = "localhost"
    port: int = Field(default=5672, gt=0, lt=65536)
    user: str = "guest"
    password: SecretStr
    vhost: str = "/thermo"
    exchange: str = "thermo_exchange"


class MqttSettings(EnvSettings):
    env_prefix = "MQTT_"

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


class KafkaSettings(EnvSettings):
    env_prefix = "KAFKA_"

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "objectflow"

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class MongoSettings(EnvSettings):
    env_prefix = "MONGODB_"

    uri: SecretStr = SecretStr("mongodb://localhost:27017/runner_db")
    database: str | None = None

    @property
    def database_name(self) -> str:
        return (
            self.database or urlsplit(self.uri.get_secret_value()).path.lstrip("/") or "runner_db"
        )


class RuntimeSettings(EnvSettings):
    """How the adapter behaves: retry budget, size limits, idempotency window, logs."""

    env_prefix = "OBJECTFLOW_"

    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_base_delay: float = Field(default=0.1, gt=0)
    retry_max_delay: float = Field(default=2.0, gt=0)
    max_event_bytes: int = Field(default=1024 * 1024, gt=0)
    # The pre-check only has to outlast redelivery: the broker's retries (minutes at most), MinIO
    # and MQTT resending after a short outage. The domain's own guards dedupe beyond it.
    idempotency_ttl: int = Field(default=3600, gt=0)
    log_level: str = "INFO"


def env_name(cls: type[BaseModel], loc: str) -> str:
    """The environment variable(s) behind a validation error's location, for messages."""
    prefix = _prefix(cls)
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
