"""The MQTT bridge's routes, as values.yaml `sources.mqtt-bridge` declares them.

Defined here, beside the bridge that is deployed on its own, and reused by the wiring model
(devstack/wiring.py), so the chart, the local runtime and the bridge read one definition.
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


class MqttBridge(BaseModel):
    model_config = VALUES_CONFIG

    client_id: str = "objectflow-mqtt-bridge"
    routes: list[MqttRoute] = []
