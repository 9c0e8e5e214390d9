"""The OTA command a device receives on MQTT `commands/<device_id>/ota` (QoS 1).

Its `message_id` is derived from the job and the version it was made ready at, so a command
sent again for the same readiness (a publish whose job update was lost, then redelivered) is
the same command to the device, which acknowledges each message id once; a re-dispatch by
ota-deadlines readies the job at a new version and so sends a new command. The link is a
presigned GET of the firmware object, signed locally (no call to MinIO) for
`OTA_URL_EXPIRY_SECONDS`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from functions.ota import settings as ota_settings
from functions.ota.firmwares import Firmware
from functions.ota.jobs import Job
from functions.runtime import clients

NAMESPACE = uuid.UUID("3a1f5a52-8f0e-4b57-9d61-0c2f6e0d7a41")


def topic(device_id: str) -> str:
    return f"commands/{device_id}/ota"


def message_id(job_id: str, version: int) -> str:
    """One id per job and readiness (see the module docstring)."""
    return str(uuid.uuid5(NAMESPACE, f"{job_id}/{version}"))


class Command(BaseModel):
    message_id: str
    job_id: str
    device_id: str
    firmware_version: str
    url: str = Field(description="Presigned GET of the firmware object")
    sha256: str = Field(description="Hex digest the device checks the download against")
    size: int = Field(ge=0)
    signature: str | None = Field(
        description="base64 ed25519 signature of the firmware's bytes (null: unsigned)"
    )
    issued_at: datetime
    expires_at: datetime = Field(description="When the link stops working")

    def payload(self) -> bytes:
        return self.model_dump_json().encode()


def build(job: Job, firmware: Firmware, now: datetime | None = None) -> Command:
    """The command of `job` (ready at its current version) with a fresh link."""
    expiry = ota_settings.dispatch().url_expiry_seconds
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    bucket = ota_settings.buckets().firmware_bucket
    url = clients.s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": firmware.key}, ExpiresIn=expiry
    )
    return Command(
        message_id=message_id(job.id, job.version),
        job_id=job.id,
        device_id=job.device_id,
        firmware_version=firmware.version,
        url=url,
        sha256=firmware.sha256,
        size=firmware.size,
        signature=firmware.signature,
        issued_at=issued,
        expires_at=issued + timedelta(seconds=expiry),
    )
