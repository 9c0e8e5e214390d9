"""The wiring diagram (charts/objectflow/values.yaml) as typed, validated objects.

The Helm chart and the local runtime both read the same file; this module is how Python reads
it. `values.schema.json` is generated from these models (`objectflow wiring schema`), so the
chart rejects exactly what the runtime rejects: unknown keys and wrong types.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from functions.sources.routes import VALUES_CONFIG, MqttBridge

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts" / "objectflow" / "values.yaml"
SCHEMA = ROOT / "charts" / "objectflow" / "values.schema.json"

NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a Kubernetes object name (RFC 1123 label)
# Settings that hold credentials: they belong in the Secret, never in `config` (a ConfigMap).
SECRET_SETTING = (
    r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|PRIVATE_KEY|^DATABASE_URL$|^MONGODB_URI$"
)


class Model(BaseModel):
    model_config = VALUES_CONFIG


_TIMEDELTA = TypeAdapter(timedelta)


@functools.cache
def seconds(duration: str) -> float:
    """An ISO-8601 duration (as Knative's delivery takes it) in seconds."""
    return _TIMEDELTA.validate_python(duration).total_seconds()


def _duration(value: str) -> str:
    seconds(value)  # raises for anything that is not an ISO-8601 duration
    return value


class Delivery(Model):
    """Knative delivery: retries with backoff, then the dead-letter sink."""

    retry: int = Field(default=5, ge=0, le=100)
    backoff_policy: Literal["exponential", "linear"] = "exponential"
    backoff_delay: str = "PT0.2S"
    timeout: str = "PT30S"
    dead_letter: bool = True

    _check_delay = field_validator("backoff_delay", "timeout")(_duration)

    @property
    def backoff_seconds(self) -> float:
        return seconds(self.backoff_delay)

    @property
    def timeout_seconds(self) -> float:
        return seconds(self.timeout)

    def delay(self, retry_number: int) -> float:
        """Base delay before redelivery `retry_number` (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_seconds * retry_number
        return self.backoff_seconds * 2 ** (retry_number - 1)


class DeliveryOverride(Model):
    retry: int | None = Field(default=None, ge=0, le=100)
    backoff_policy: Literal["exponential", "linear"] | None = None
    backoff_delay: str | None = None
    timeout: str | None = None
    dead_letter: bool | None = None

    @field_validator("backoff_delay", "timeout")
    @classmethod
    def _check(cls, value: str | None) -> str | None:
        return None if value is None else _duration(value)


AttributeMap = dict[str, str]
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not_")


class Filter(Model):
    """One Knative `filters` expression; exactly one dialect per entry.

    exact/prefix/suffix: every listed CloudEvent attribute must equal / start with / end with the
    value. all/any/not combine nested filters. (CESQL is not supported by the local runtime.)
    """

    exact: AttributeMap | None = None
    prefix: AttributeMap | None = None
    suffix: AttributeMap | None = None
    all: list[Filter] | None = None
    any: list[Filter] | None = None
    not_: Filter | None = Field(default=None, alias="not")

    @field_validator("exact", "prefix", "suffix")
    @classmethod
    def _non_empty(cls, value: AttributeMap | None) -> AttributeMap | None:
        if value is not None and not value:
            raise ValueError("needs at least one attribute")
        return value

    def model_post_init(self, _context: Any) -> None:
        dialects = [k for k in DIALECTS if getattr(self, k) is not None]
        if len(dialects) != 1:
            raise ValueError(f"a filter needs exactly one of {', '.join(DIALECTS)}; got {dialects}")

    def matches(self, attributes: dict[str, Any]) -> bool:
        def value(name: str) -> str | None:
            found = attributes.get(name)
            return None if found is None else str(found)

        if self.exact is not None:
            return all(value(k) == v for k, v in self.exact.items())
        if self.prefix is not None:
            return all((value(k) or "\0").startswith(v) for k, v in self.prefix.items())
        if self.suffix is not None:
            return all((value(k) or "\0").endswith(v) for k, v in self.suffix.items())
        if self.all is not None:
            return all(f.matches(attributes) for f in self.all)
        if self.any is not None:
            return any(f.matches(attributes) for f in self.any)
        assert self.not_ is not None
        return not self.not_.matches(attributes)


class Trigger(Model):
    name: str = Field(pattern=NAME)
    filters: list[Filter] = Field(min_length=1)
    delivery: DeliveryOverride = DeliveryOverride()
    ordered: bool = False  # one event at a time per `partitionkey` extension, else per `subject`

    def matches(self, attributes: dict[str, Any]) -> bool:
        return all(f.matches(attributes) for f in self.filters)


# --- Kubernetes only: the chart reads these keys, the local runtime accepts and ignores them ---


class Scaling(Model):
    """Knative autoscaling and request limits of one function's Service."""

    min_scale: int = Field(default=0, ge=0)
    max_scale: int = Field(default=10, ge=0, description="0: no upper bound")
    container_concurrency: int = Field(default=0, ge=0, le=1000, description="0: unlimited")
    timeout_seconds: int = Field(default=300, gt=0, le=3600)


class ScalingOverride(Model):
    min_scale: int | None = Field(default=None, ge=0)
    max_scale: int | None = Field(default=None, ge=0)
    container_concurrency: int | None = Field(default=None, ge=0, le=1000)
    timeout_seconds: int | None = Field(default=None, gt=0, le=3600)


Quantities = dict[Literal["cpu", "memory", "ephemeral-storage"], str | int]


class Resources(Model):
    requests: Quantities = {}
    limits: Quantities = {}


class Function(Model):
    entrypoint: str = Field(pattern=r"^[\w./-]+\.py:[A-Za-z_]\w*$")
    kind: Literal["cloudevent", "http"] = "cloudevent"
    triggers: list[Trigger] = []
    env: dict[str, str] = {}
    touches: list[str] = Field(default=[], description="State it reads or writes (for the docs)")
    scaling: ScalingOverride = ScalingOverride()
    resources: Resources | None = Field(default=None, description="Replaces the default")

    @property
    def source(self) -> str:
        return self.entrypoint.split(":")[0]

    @property
    def target(self) -> str:
        return self.entrypoint.split(":")[1]


class Schedule(Model):
    cron: str
    timezone: str = "UTC"
    data: dict[str, Any] = {}

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value


class MinioBucket(Model):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    events: list[str] = ["s3:ObjectCreated:*"]


class MinioSource(Model):
    buckets: list[MinioBucket] = []


class KafkaSource(Model):
    topics: list[str] = Field(min_length=1)
    consumer_group: str
    initial_offset: Literal["earliest", "latest"] = "earliest"


class Sources(Model):
    mqtt_bridge: MqttBridge = MqttBridge()
    minio: MinioSource = MinioSource()
    kafka: dict[str, KafkaSource] = {}


class Local(Model):
    broker_port: int = Field(default=8080, gt=0, lt=65536)
    minio_webhook_port: int = Field(default=8090, gt=0, lt=65536)
    dead_letter_port: int = Field(default=8091, gt=0, lt=65536)
    function_port_base: int = Field(default=8101, gt=0, lt=65536)


class Image(Model):
    repository: str = "objectflow-functions"
    tag: str = Field(default="", description="Empty: the chart's appVersion")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class ConfigMapRef(Model):
    name: str = Field(pattern=NAME)
    namespace: str = Field(pattern=NAME)


class Broker(Model):
    name: str = Field(default="default", pattern=NAME)
    class_: Literal["MTChannelBasedBroker", "Kafka"] = "MTChannelBasedBroker"
    config: ConfigMapRef | None = Field(default=None, description="The broker class's ConfigMap")


class Scheduler(Model):
    mode: Literal["cronjob", "pingsource"] = "cronjob"
    successful_jobs_history_limit: int = Field(default=1, ge=0)
    failed_jobs_history_limit: int = Field(default=3, ge=0)
    starting_deadline_seconds: int = Field(default=50, gt=0)


class Secrets(Model):
    existing_secret: str = Field(default="", description="Empty: the chart generates one")


class ServiceAccount(Model):
    annotations: dict[str, str] = {}


class NetworkPolicies(Model):
    enabled: bool = True
    knative_namespaces: list[str] = ["knative-serving", "knative-eventing", "kourier-system"]
    ingress: list[dict[str, Any]] = Field(default=[], description="NetworkPolicyIngressRules")
    egress: list[dict[str, Any]] = Field(default=[], description="NetworkPolicyEgressRules")


class Migrations(Model):
    enabled: bool = True
    backoff_limit: int = Field(default=10, ge=0)


class DevServiceImages(Model):
    postgresql: str
    redis: str
    rabbitmq: str
    kafka: str
    mosquitto: str
    minio: str
    minio_client: str
    ferretdb: str


class DevServices(Model):
    enabled: bool = False
    storage: str = "1Gi"
    storage_class: str = Field(default="", description="Empty: the cluster's default class")
    images: DevServiceImages


class Values(Model):
    namespace: str = Field(default="objectflow", pattern=NAME)
    delivery: Delivery = Delivery()
    functions: dict[str, Function] = {}
    schedules: dict[str, Schedule] = {}
    sources: Sources = Sources()
    local: Local = Local()
    # Kubernetes only
    image: Image = Image()
    broker: Broker = Broker()
    scaling: Scaling = Scaling()
    resources: Resources = Resources()
    scheduler: Scheduler = Scheduler()
    config: dict[str, str] = Field(
        default={},
        description="Plain settings for every workload (a ConfigMap); credentials go in the Secret",
        json_schema_extra={"propertyNames": {"not": {"pattern": SECRET_SETTING}}},
    )
    secrets: Secrets = Secrets()
    service_account: ServiceAccount = ServiceAccount()
    network_policies: NetworkPolicies = NetworkPolicies()
    migrations: Migrations = Migrations()
    live_update: bool = False
    dev_services: DevServices | None = None

    @field_validator("config")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        secret = [name for name in value if re.search(SECRET_SETTING, name)]
        if secret:
            raise ValueError(f"credentials belong in the Secret (`secrets`), not config: {secret}")
        return value

    @field_validator("functions", "schedules")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in value if not re.match(NAME, name)]
        if bad:
            raise ValueError(f"names must be kebab-case Kubernetes names: {bad}")
        return value

    def delivery_for(self, trigger: Trigger) -> Delivery:
        override = trigger.delivery.model_dump(exclude_none=True)
        return self.delivery.model_copy(update=override)

    def function_ports(self) -> dict[str, int]:
        return {name: self.local.function_port_base + i for i, name in enumerate(self.functions)}


class WiringError(Exception):
    """values.yaml is unreadable or breaks the schema; the message names the key."""


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge recursively, everything else is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(*overlays: Path, base: Path = VALUES) -> Values:
    """Read values.yaml plus overlays (like `helm -f`), validated."""
    raw: dict[str, Any] = {}
    for path in (base, *overlays):
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise WiringError(f"{path}: {exc}") from None
        raw = _merge(raw, document)
    try:
        return Values.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WiringError(f"values: {where}: {first['msg']}") from None


@functools.cache
def default() -> Values:
    return load()


def json_schema() -> dict[str, Any]:
    schema = Values.model_json_schema(by_alias=True)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "objectflow values"
    return schema


CATALOG_START = "<!-- catalog:start (generated by `objectflow catalog` from values.yaml) -->"
CATALOG_END = "<!-- catalog:end -->"


def catalog_markdown(values: Values) -> str:
    """The functions table of functions/README.md, derived from the diagram."""

    def filters(trigger: Trigger) -> str:
        return " and ".join(
            json_filter(f.model_dump(by_alias=True, exclude_none=True)) for f in trigger.filters
        )

    lines = [
        CATALOG_START,
        "| function | entrypoint | kind | triggers (filters) | state touched |",
        "|---|---|---|---|---|",
    ]
    for name, fn in values.functions.items():
        triggers = "<br>".join(
            f"`{t.name}`{' (ordered)' if t.ordered else ''}: {filters(t)}" for t in fn.triggers
        )
        lines.append(
            f"| `{name}` | `{fn.entrypoint}` | {fn.kind} | {triggers or '-'} | "
            f"{', '.join(fn.touches) or '-'} |"
        )
    lines.append(CATALOG_END)
    return "\n".join(lines)


def json_filter(expression: dict[str, Any]) -> str:
    ((dialect, body),) = expression.items()
    if isinstance(body, dict) and dialect in ("exact", "prefix", "suffix"):
        return " and ".join(f"{k} {dialect} `{v}`" for k, v in body.items())
    if dialect == "not":
        return f"not ({json_filter(body)})"
    return f" {dialect} ".join(f"({json_filter(b)})" for b in body)
