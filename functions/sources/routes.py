"""The deployed sources' settings as values.yaml declares them: `sources.mqtt-bridge` (the MQTT
bridge's routes) and `sources.mongo-outbox`.

Defined here, beside the sources that are deployed on their own, and reused by the wiring model
(devstack/wiring.py), so the chart, the local runtime and the sources read one definition.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


def kebab(name: str) -> str:
    return name.rstrip("_").replace("_", "-")


# values.yaml keys are kebab-case; unknown keys are errors.
VALUES_CONFIG = ConfigDict(
    extra="forbid", frozen=True, alias_generator=kebab, populate_by_name=True
)


class MqttRoute(BaseModel):
    model_config = VALUES_CONFIG

    topic: str = Field(min_length=1)
    type: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    subject_segment: int | None = Field(
        default=None, ge=0, description="Topic level (0-based) that becomes the CloudEvent subject"
    )
    partition_segment: int | None = Field(
        default=None,
        ge=0,
        description="Topic level (0-based) that becomes the `partitionkey` extension, by which "
        "`ordered` triggers keep order (the Kafka broker's record key)",
    )
    kafka_topic: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Produce each message to this Kafka topic instead of the sink: the payload "
        "unchanged, keyed by the partition segment, acknowledged on MQTT once Kafka has it",
    )


class MqttBridge(BaseModel):
    model_config = VALUES_CONFIG

    client_id: str = "objectflow-mqtt-bridge"
    lanes: int = Field(
        default=8, ge=1, le=64,
        description="Posts to the sink at once (the messages of one partition key: one at a time)",
    )  # fmt: skip
    routes: list[MqttRoute] = []
    sink: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="A function to send to directly (a Knative Service sink); empty: the broker",
    )


class MongoOutbox(BaseModel):
    """values.yaml `sources.mongo-outbox`: the MongoDB collection the outbox source watches."""

    model_config = VALUES_CONFIG

    collection: str = Field(
        default="runner_predictions",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$",
        description="In MONGODB_URI's database; a collection some domain declares",
    )
    type: str = Field(
        default="objectflow.detections.prediction.predictable.v1",
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="CloudEvent type of the events it posts",
    )
    env: dict[str, str] = Field(default={}, description="Extra settings (DETECTIONS_*)")
