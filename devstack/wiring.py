"""The wiring diagram (charts/objectflow/values.yaml) as typed, validated objects.

The Helm chart and the local runtime both read the same file; this module is how Python reads
it. `values.schema.json` is generated from these models (`objectflow wiring schema`), so the
chart rejects exactly what the runtime rejects: unknown keys and wrong types.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from functions.sources.routes import VALUES_CONFIG, MongoOutbox, MqttBridge

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts" / "objectflow" / "values.yaml"
SCHEMA = ROOT / "charts" / "objectflow" / "values.schema.json"

NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a Kubernetes object name (RFC 1123 label)
ENTRYPOINT = r"^[\w./-]+\.py:[A-Za-z_]\w*$"  # path/to/file.py:attribute
PING_TYPE = "dev.knative.sources.ping"
# Derived local ports: function-port-base + crc32(name) % PORT_SPAN. With the default base,
# 10000-19999: no service of the stack listens there, and it is below Linux's ephemeral ports
# (32768+), so an outgoing connection never holds one. 10000 slots keep collisions rare.
PORT_SPAN = 10000
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

    def delay(self, retry_number: int, broker_class: BrokerClass = "MTChannelBasedBroker") -> float:
        """The wait before redelivery `retry_number` (1-based) as the broker class computes it,
        without jitter (neither adds any). MT (eventing pkg/kncloudevents/retries.go) counts
        i = retry_number - 1 from 0: delay·2^i, delay·i (the first retry at once). The Kafka
        broker counts n = retry_number from 1: delay·2^n, delay·n (twice MT's exponential)."""
        n = retry_number if broker_class == "Kafka" else retry_number - 1
        if self.backoff_policy == "linear":
            return self.backoff_seconds * n
        return self.backoff_seconds * 2**n

    def window(self, broker_class: BrokerClass = "MTChannelBasedBroker") -> float:
        """Seconds of backoff between the first attempt and the last retry (timeouts aside)."""
        return sum(self.delay(n, broker_class) for n in range(1, self.retry + 1))


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
# CloudEvents attribute names as Knative's trigger webhook takes them (eventing
# pkg/apis/eventing/v1/trigger_validation.go `ValidateAttributesNames`).
ATTRIBUTE_NAME = r"^[a-z][a-z0-9]*$"
BrokerClass = Literal["MTChannelBasedBroker", "Kafka"]


_NAMES = {"propertyNames": {"pattern": ATTRIBUTE_NAME}}


class Filter(Model):
    """One Knative `filters` expression; exactly one dialect per entry.

    exact/prefix/suffix: every listed CloudEvent attribute must equal / start with / end with the
    value. all/any/not combine nested filters. (CESQL is not supported by the local runtime.)
    A filter Knative cannot build (an attribute with an empty value, an empty `any`) is skipped
    by its `MaterializeFiltersList`, so it matches every event; here too.
    """

    exact: AttributeMap | None = Field(default=None, json_schema_extra=_NAMES)
    prefix: AttributeMap | None = Field(default=None, json_schema_extra=_NAMES)
    suffix: AttributeMap | None = Field(default=None, json_schema_extra=_NAMES)
    all: list[Filter] | None = None
    any: list[Filter] | None = None
    not_: Filter | None = Field(default=None, alias="not")

    @field_validator("exact", "prefix", "suffix")
    @classmethod
    def _non_empty(cls, value: AttributeMap | None) -> AttributeMap | None:
        if value is not None and not value:
            raise ValueError("needs at least one attribute")
        bad = [name for name in value or {} if not re.match(ATTRIBUTE_NAME, name)]
        if bad:
            raise ValueError(
                f"CloudEvents attribute names are lower-case letters and digits, starting with "
                f"a letter ({ATTRIBUTE_NAME}), as Knative's trigger validation requires: {bad}"
            )
        return value

    def model_post_init(self, _context: Any) -> None:
        dialects = [k for k in DIALECTS if getattr(self, k) is not None]
        if len(dialects) != 1:
            raise ValueError(f"a filter needs exactly one of {', '.join(DIALECTS)}; got {dialects}")

    def matches(self, attributes: dict[str, Any]) -> bool:
        def value(name: str) -> str | None:
            found = attributes.get(name)
            return None if found is None else str(found)

        if self.skipped:
            return True
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

    @property
    def skipped(self) -> bool:
        """Whether Knative's MaterializeFiltersList leaves this filter out (it cannot build an
        exact/prefix/suffix filter with an empty value, nor an `any` of nothing)."""
        attributes = self.exact or self.prefix or self.suffix
        if attributes is not None:
            return any(v == "" for v in attributes.values())
        return self.any is not None and not self.any


def ping_source(namespace: str, schedule: str) -> str:
    """The CloudEvent `source` of schedule (PingSource) `schedule` in `namespace`."""
    return f"/apis/v1/namespaces/{namespace}/pingsources/{schedule}"


PING_SOURCE = re.compile(r"^/apis/v1/namespaces/(?P<namespace>[^/]+)/pingsources/(?P<name>[^/]+)$")


class Trigger(Model):
    """A subscription: `filters`, or `schedule` (the ping events of one schedule) plus optional
    `filters` that narrow it further."""

    name: str = Field(pattern=NAME)
    schedule: str | None = Field(
        default=None, description="A key of `schedules`: matches that schedule's ping events"
    )
    filters: list[Filter] = Field(default=[], min_length=1)
    delivery: DeliveryOverride = DeliveryOverride()
    # One event at a time per `partitionkey` extension (events without one are not held back),
    # as the Kafka broker orders; the MT broker orders nothing (the chart warns).
    ordered: bool = False

    # values.schema.json: without `schedule`, `filters` is required.
    model_config = VALUES_CONFIG | ConfigDict(
        json_schema_extra={
            "if": {"not": {"required": ["schedule"]}},
            "then": {"required": ["filters"]},
        }
    )

    @model_validator(mode="after")
    def _filters_or_schedule(self) -> Trigger:
        if not self.filters and self.schedule is None:
            raise ValueError(f"trigger {self.name}: needs `filters` or `schedule`")
        return self

    def expanded(self, namespace: str) -> Trigger:
        """This trigger with `schedule` spelt out as the filter it stands for (in `namespace`),
        before any declared filters, as the chart renders it."""
        if self.schedule is None:
            return self
        ping = Filter(exact={"type": PING_TYPE, "source": ping_source(namespace, self.schedule)})
        return self.model_copy(update={"schedule": None, "filters": [ping, *self.filters]})

    def matches(self, attributes: dict[str, Any]) -> bool:
        """Whether the (expanded) filters match; see `expanded` for schedule triggers."""
        assert self.schedule is None, "match Trigger.expanded(namespace), not a schedule trigger"
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


class Serve(Model):
    """What the runtime serves: a functions-framework target and its local port."""

    entrypoint: str = Field(pattern=ENTRYPOINT)
    kind: Literal["cloudevent", "http"] = "cloudevent"
    local_port: int | None = Field(
        default=None,
        gt=0,
        lt=65536,
        description="Local runtime only; empty: local.function-port-base + crc32(name) % 10000",
    )

    @property
    def source(self) -> str:
        return self.entrypoint.split(":")[0]

    @property
    def target(self) -> str:
        return self.entrypoint.split(":")[1]


class PlatformComponent(Serve):
    """A component of objectflow itself (not a domain's function), served like a function."""

    kind: Literal["cloudevent", "http"] = "http"


class Platform(Model):
    """The platform's own components; both engines run them from here."""

    dead_letter: PlatformComponent | None = Field(
        default=None, description="Every trigger's dead-letter sink (needed by `dead-letter: true`)"
    )
    minio_webhook: PlatformComponent | None = Field(
        default=None, description="MinIO's webhook target; runs when sources.minio.buckets is set"
    )


class Scale(Model):
    """How many processes of a function run, honoured by both engines: the chart maps `min`
    and `max` to Knative's min-scale/max-scale annotations and `concurrency` to
    containerConcurrency; the local runtime runs `max` processes (else `min`, at least one)
    behind the broker, which gives each at most `concurrency` deliveries at once."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=0, le=1000, description="0: unlimited")

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"scale.min ({self.min}) is above scale.max ({self.max})")
        return self

    @property
    def processes(self) -> int:
        return max(1, self.max or self.min or 1)


class Function(Serve):
    triggers: list[Trigger] = []
    env: dict[str, str] = {}
    touches: list[str] = Field(default=[], description="State it reads or writes (for the docs)")
    scale: Scale = Scale()
    scaling: ScalingOverride = ScalingOverride()
    resources: Resources | None = Field(default=None, description="Replaces the default")

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> Function:
        pairs = [
            ("min", "min_scale"),
            ("max", "max_scale"),
            ("concurrency", "container_concurrency"),
        ]
        both = [k for k, twin in pairs if getattr(self.scale, k) is not None
                and getattr(self.scaling, twin) is not None]  # fmt: skip
        if both:
            raise ValueError(f"scale.{both[0]} and its `scaling` twin are both set; keep `scale`")
        return self


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


BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class MinioBucket(Model):
    bucket: str = Field(pattern=BUCKET)
    events: list[str] = ["s3:ObjectCreated:*"]


class MinioSource(Model):
    buckets: list[MinioBucket] = []
    public: bool = Field(
        default=False,
        description="Kubernetes only: expose minio-webhook through the cluster's ingress (Knative "
        "Serving's domain) for a MinIO outside the cluster; its bearer token is checked anyway",
    )


SINK_HELP = "A function to send to directly (a Knative Service sink); empty: the broker"


class KafkaSource(Model):
    topics: list[str] = Field(min_length=1)
    consumer_group: str
    initial_offset: Literal["earliest", "latest"] = "earliest"
    sink: str | None = Field(default=None, pattern=NAME, description=SINK_HELP)
    delivery: DeliveryOverride = Field(
        default=DeliveryOverride(),
        description="Overrides of `delivery` for posting records to the broker; then the "
        "record is dead-lettered and its offset committed",
    )
    local_session_timeout_ms: int | None = Field(
        default=None,
        ge=6000,
        le=300000,
        description="Local runtime only: its consumer's group session timeout, how long a "
        "member that died without leaving holds its partitions (default kafka-python's 45 s; "
        "in a cluster the KafkaSource dispatcher's consumer configuration sets it)",
    )


class OutboxRelay(Model):
    """A long-running process that publishes a PostgreSQL outbox to Kafka: a Deployment in a
    cluster, one process locally (`python -m <module>`, serving /metrics on its port)."""

    module: str = Field(pattern=r"^[A-Za-z_][\w.]*$", description="Run as python -m <module>")
    replicas: int = Field(default=1, ge=1, le=20, description="Kubernetes only")
    local_port: int = Field(gt=0, lt=65536, description="Local runtime only: its metrics port")


class Sources(Model):
    mqtt_bridge: MqttBridge = MqttBridge()
    minio: MinioSource = MinioSource()
    kafka: dict[str, KafkaSource] = {}
    mongo_outbox: MongoOutbox | None = Field(
        default=None, description="The MongoDB outbox source; runs when declared"
    )
    outbox_relays: dict[str, OutboxRelay] = {}


class LocalPrometheus(Model):
    """Debian's Prometheus on the local stack, scraping the runtime and loading the alert rules
    (devstack/monitoring.py)."""

    enabled: bool = Field(
        default=False, description="`make up` starts it (as `--monitoring` / MONITORING=1 do)"
    )
    port: int = Field(default=9095, gt=0, lt=65536)
    scrape_interval: str = Field(
        default="15s",
        pattern=r"^[0-9]+(ms|s|m)$",
        description="Scrape and rule evaluation interval (a Prometheus duration)",
    )


class LocalTracing(Model):
    """The runtime's trace collector (devstack/runtime/trace_collector.py): every process
    exports its spans to it; `objectflow traces` shows them."""

    enabled: bool = Field(default=False, description="start it and trace every process")
    port: int = Field(default=4318, gt=0, lt=65536, description="its OTLP/HTTP port")

    @property
    def env(self) -> dict[str, str]:
        """What every process of the runtime gets while it is enabled."""
        if not self.enabled:
            return {}
        # a short batch delay: a span is visible within a second, not the SDK's default 5 s
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
                "OTEL_BSP_SCHEDULE_DELAY": "500"}  # fmt: skip


class Local(Model):
    broker_port: int = Field(default=8080, gt=0, lt=65536)
    function_port_base: int = Field(default=10000, gt=0, lt=65536 - PORT_SPAN)
    prometheus: LocalPrometheus = LocalPrometheus()
    tracing: LocalTracing = LocalTracing()


class Domain(Model):
    """The infrastructure one domain's functions need; `make up` and the chart's dev-services
    provision the union of every domain's, and nothing else."""

    buckets: dict[str, str] = Field(default={}, description="env name -> MinIO bucket")
    topics: dict[str, int] = Field(default={}, description="Kafka topic -> partitions")
    collections: list[str] = Field(default=[], description="MongoDB collections (MONGODB_URI's db)")

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, value: dict[str, str]) -> dict[str, str]:
        for env, bucket in value.items():
            if not re.match(r"^[A-Z][A-Z0-9_]*$", env):
                raise ValueError(f"bucket env names are UPPER_SNAKE_CASE: {env!r}")
            if not re.match(BUCKET, bucket):
                raise ValueError(f"not a valid bucket name: {bucket!r}")
        return value

    @field_validator("topics")
    @classmethod
    def _partitions(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [topic for topic, partitions in value.items() if partitions < 1]
        if bad:
            raise ValueError(f"topics need at least one partition: {bad}")
        return value


KAFKA_SOURCE_PARTITIONS = 3  # a topic a Kafka source reads that no domain declares


@dataclass(frozen=True)
class Infrastructure:
    """What the backing services must hold: the union of the domains' declarations."""

    buckets: dict[str, str]  # env name -> bucket (functions read the env)
    topics: dict[str, int]  # name -> partitions
    collections: tuple[str, ...]

    @property
    def bucket_names(self) -> list[str]:
        return sorted(set(self.buckets.values()))


class Image(Model):
    repository: str = "objectflow-functions"
    tag: str = Field(default="", description="Empty: the chart's appVersion")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class ConfigMapRef(Model):
    name: str = Field(pattern=NAME)
    namespace: str = Field(pattern=NAME)


class KafkaBrokerConfig(Model):
    """The per-release ConfigMap of a Kafka-class broker without `broker.config`."""

    bootstrap_servers: str = Field(
        default="", description="Empty: config.KAFKA_BOOTSTRAP_SERVERS (dev-services: in-cluster)"
    )
    partitions: int = Field(default=10, ge=1, description="Of each trigger's topic")
    replication_factor: int = Field(default=3, ge=1, description="1 with dev-services")


class Broker(Model):
    name: str = Field(default="default", pattern=NAME)
    class_: BrokerClass = "MTChannelBasedBroker"
    config: ConfigMapRef | None = Field(
        default=None,
        description="An existing ConfigMap of the class; null with class Kafka: one per release "
        "from `kafka-config`",
    )
    kafka_config: KafkaBrokerConfig = KafkaBrokerConfig()


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


class Grafana(Model):
    enabled: bool = Field(
        default=True,
        description="With monitoring.enabled: the dashboards (dashboards/*.json) as ConfigMaps "
        "for Grafana's sidecar",
    )
    labels: dict[str, str] = Field(
        default={"grafana_dashboard": "1"},
        description="Labels of the dashboard ConfigMaps: what the sidecar's `label` selects",
    )
    annotations: dict[str, str] = Field(
        default={}, description="Annotations of the dashboard ConfigMaps, e.g. the sidecar's folder"
    )


class Monitoring(Model):
    enabled: bool = Field(
        default=False,
        description="Render the alert rules (rules/objectflow.rules.yaml) as a PrometheusRule",
    )
    labels: dict[str, str] = Field(
        default={}, description="Extra labels of the PrometheusRule (the operator's ruleSelector)"
    )
    grafana: Grafana = Grafana()


class Tracing(Model):
    otlp_endpoint: str = Field(
        default="",
        pattern=r"^(https?://\S+)?$",
        description="OTLP/HTTP endpoint every function and source exports spans to "
        "(OTEL_EXPORTER_OTLP_ENDPOINT); empty: tracing off",
    )


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
    namespace: str = Field(
        default="objectflow",
        pattern=NAME,
        description="Local runtime only: the namespace its stand-in event sources name; "
        "the chart uses the release's namespace",
    )
    delivery: Delivery = Delivery()
    platform: Platform = Platform()
    domains: dict[str, Domain] = {}
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
    monitoring: Monitoring = Monitoring()
    tracing: Tracing = Tracing()
    dev_services: DevServices | None = None

    @field_validator("config")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        secret = [name for name in value if re.search(SECRET_SETTING, name)]
        if secret:
            raise ValueError(f"credentials belong in the Secret (`secrets`), not config: {secret}")
        return value

    @field_validator("functions", "schedules", "domains")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in value if not re.match(NAME, name)]
        if bad:
            raise ValueError(f"names must be kebab-case Kubernetes names: {bad}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Values:
        for name, function in self.functions.items():
            for trigger in function.triggers:
                self._check_schedules(f"functions.{name}.triggers.{trigger.name}", trigger)
                if self.delivery_for(trigger).dead_letter and self.platform.dead_letter is None:
                    raise ValueError(
                        f"functions.{name}.triggers.{trigger.name}: dead-letter is on but "
                        "platform.dead-letter is not declared"
                    )
        sinks = {"sources.mqtt-bridge": self.sources.mqtt_bridge.sink}
        sinks |= {f"sources.kafka.{n}": source.sink for n, source in self.sources.kafka.items()}
        for where, sink in sinks.items():
            if sink is not None and sink not in self.functions:
                raise ValueError(f"{where}.sink: {sink!r} is not a key of `functions`")
        if self.sources.minio.buckets and self.platform.minio_webhook is None:
            raise ValueError("sources.minio.buckets needs platform.minio-webhook")
        platform = set(self.platform_components())
        clash = sorted(platform & set(self.functions))
        if clash:
            raise ValueError(f"functions may not take the platform's names: {clash}")
        self.ports()  # raises on a collision
        collections = self.infrastructure().collections  # raises on conflicting declarations
        outbox = self.sources.mongo_outbox
        if outbox is not None and outbox.collection not in collections:
            raise ValueError(
                f"sources.mongo-outbox.collection {outbox.collection!r} is in no domain's "
                f"`collections` (declared: {', '.join(collections) or 'none'})"
            )
        return self

    def _check_schedules(self, where: str, trigger: Trigger) -> None:
        known = ", ".join(self.schedules) or "none"
        if trigger.schedule is not None and trigger.schedule not in self.schedules:
            raise ValueError(
                f"{where}: schedule {trigger.schedule!r} is not a key of `schedules` "
                f"(declared: {known})"
            )
        for source in _ping_sources(trigger.filters):
            match = PING_SOURCE.match(source)
            if (
                match is None
                or match["name"] not in self.schedules
                or match["namespace"] != self.namespace
            ):
                raise ValueError(
                    f"{where}: filters on {PING_TYPE} from {source!r}, which no schedule sends "
                    f"(declared: {known}); write `schedule: <name>` instead"
                )

    def delivery_for(self, trigger: Trigger | KafkaSource) -> Delivery:
        """`delivery` with a trigger's (or a Kafka source's) overrides."""
        override = trigger.delivery.model_dump(exclude_none=True)
        return self.delivery.model_copy(update=override)

    def platform_components(self) -> dict[str, PlatformComponent]:
        """The platform components both engines run (minio-webhook only with MinIO buckets)."""
        found = {}
        if self.platform.dead_letter is not None:
            found["dead-letter"] = self.platform.dead_letter
        if self.platform.minio_webhook is not None and self.sources.minio.buckets:
            found["minio-webhook"] = self.platform.minio_webhook
        return found

    def served(self) -> dict[str, Serve]:
        """Every functions-framework process of the diagram: functions, then the platform."""
        return {**self.functions, **self.platform_components()}

    def ports(self) -> dict[str, int]:
        """Local port of every served component: its `local-port`, or one derived from its name
        (stable: adding or reordering functions moves no other port)."""
        return {name: ports[0] for name, ports in self.process_ports().items()}

    def process_ports(self) -> dict[str, list[int]]:
        """Local ports of every served component's processes: the first at its port, the
        others (`scale`) at ports derived from `<name>.<n>`, checked for collisions alike."""
        ports: dict[str, list[int]] = {}
        taken = {self.local.broker_port: "local.broker-port"}
        candidates = {**self.functions}
        if self.platform.dead_letter is not None:
            candidates["dead-letter"] = self.platform.dead_letter
        if self.platform.minio_webhook is not None:
            candidates["minio-webhook"] = self.platform.minio_webhook

        def derived(process: str) -> int:
            return self.local.function_port_base + zlib.crc32(process.encode()) % PORT_SPAN

        for name, served in candidates.items():
            count = served.scale.processes if isinstance(served, Function) else 1
            wanted_ports = [(name, served.local_port or derived(name))]
            wanted_ports += [(f"{name}.{n}", derived(f"{name}.{n}")) for n in range(2, count + 1)]
            ports[name] = []
            for process, wanted in wanted_ports:
                if wanted in taken:
                    raise ValueError(
                        f"local port {wanted} of {process} is also the port of {taken[wanted]}; "
                        f"declare `local-port` on one of them"
                    )
                taken[wanted] = process
                ports[name].append(wanted)
        for name, relay in self.sources.outbox_relays.items():
            if relay.local_port in taken:
                raise ValueError(
                    f"local port {relay.local_port} of {name} is also the port of "
                    f"{taken[relay.local_port]}"
                )
            taken[relay.local_port] = name
        return ports

    def source_metrics_ports(self) -> dict[str, int]:
        """Local metrics port of the MQTT bridge, each Kafka source and the cron ticker, by
        process name: derived from the name like a function's, past every function port."""
        taken = {port for ports in self.process_ports().values() for port in ports}
        taken |= {self.local.broker_port}
        taken |= {relay.local_port for relay in self.sources.outbox_relays.values()}
        names = [f"kafka-source-{name}" for name in self.sources.kafka]
        names += ["mqtt-bridge"] if self.sources.mqtt_bridge.routes else []
        names += ["cron-ticker"] if self.schedules else []
        found: dict[str, int] = {}
        base = self.local.function_port_base
        for name in names:
            offset = zlib.crc32(name.encode()) % PORT_SPAN
            while base + offset in taken:  # a collision moves only this process's port
                offset = (offset + 1) % PORT_SPAN
            taken.add(base + offset)
            found[name] = base + offset
        return found

    def function_ports(self) -> dict[str, int]:
        ports = self.ports()
        return {name: ports[name] for name in self.functions}

    def routed_triggers(self, namespace: str | None = None) -> list[tuple[str, Trigger]]:
        """(function, trigger) of every trigger, schedules expanded in `namespace`."""
        where = namespace or self.namespace
        return [
            (name, trigger.expanded(where))
            for name, function in self.functions.items()
            for trigger in function.triggers
        ]

    def infrastructure(self) -> Infrastructure:
        """The union of what the domains declare, plus the topics the Kafka sources read."""
        buckets: dict[str, str] = {}
        topics: dict[str, int] = {}
        collections: list[str] = []
        for domain_name, domain in self.domains.items():
            for env, bucket in domain.buckets.items():
                if buckets.setdefault(env, bucket) != bucket:
                    raise ValueError(
                        f"domains.{domain_name}.buckets.{env}: {bucket!r}, but another domain "
                        f"set {buckets[env]!r}"
                    )
            for topic, partitions in domain.topics.items():
                topics[topic] = max(partitions, topics.get(topic, 0))
            collections += [c for c in domain.collections if c not in collections]
        for source in self.sources.kafka.values():
            for topic in source.topics:
                topics.setdefault(topic, KAFKA_SOURCE_PARTITIONS)
        return Infrastructure(buckets, topics, tuple(collections))


def _ping_sources(filters: list[Filter]) -> list[str]:
    """`source`s of exact filters on the ping type, at any depth."""
    found = []
    for f in filters:
        if f.exact is not None and f.exact.get("type") == PING_TYPE and "source" in f.exact:
            found.append(f.exact["source"])
        found += _ping_sources([*(f.all or []), *(f.any or []), *([f.not_] if f.not_ else [])])
    return found


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
        message = first["msg"].removeprefix("Value error, ")
        raise WiringError(
            f"values: {where}: {message}" if where else f"values: {message}"
        ) from None


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
        described = [
            json_filter(f.model_dump(by_alias=True, exclude_none=True)) for f in trigger.filters
        ]
        if trigger.schedule is not None:
            described.insert(0, f"schedule `{trigger.schedule}`")
        return " and ".join(described)

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
    lines += ["", *events_markdown(), CATALOG_END]
    return "\n".join(lines)


def events_markdown() -> list[str]:
    """The event types table: every type the domains register (functions/<domain>/events.py)."""
    from functions.runtime import registry

    lines = ["| event type | data model | what it means |", "|---|---|---|"]
    for name, event in sorted(registry.load_all().items()):
        model = f"{event.model.__module__}.{event.model.__qualname__}"
        lines.append(f"| `{name}` | `{model}` | {event.description} |")
    return lines


def json_filter(expression: dict[str, Any]) -> str:
    ((dialect, body),) = expression.items()
    if isinstance(body, dict) and dialect in ("exact", "prefix", "suffix"):
        return " and ".join(f"{k} {dialect} `{v}`" for k, v in body.items())
    if dialect == "not":
        return f"not ({json_filter(body)})"
    return f" {dialect} ".join(f"({json_filter(b)})" for b in body)
