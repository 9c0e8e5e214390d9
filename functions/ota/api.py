"""ota-api — firmwares, devices and jobs over HTTP (docs/ota.md has the table and examples).

PUT  /firmwares/<version>     binary body or multipart `file` (+ X-Firmware-Signature?): 201 new,
                              200 same bytes, 409 other
GET  /firmwares, /firmwares/<version>, /signing-key (the public key devices verify with)
PUT  /devices/<device_id>     {"model", "timezone"}: 201 registered, 200 updated
GET  /devices/<device_id>
POST /jobs                    {"device_id" | "device_ids", "firmware_version", schedule?}: 201
GET  /jobs/<id>, /jobs?status=&device_id=&rollout_id=&limit=&cursor=
PATCH /jobs/<id>, POST /jobs/<id>/cancel   If-Match: <version> (428 without, 412 on mismatch)
POST /rollouts                {"firmware_version", "devices" | "selector", "waves", ...}: 201
GET  /rollouts/<id>           per-wave and overall counts by job status
POST /rollouts/<id>/pause, /resume, /cancel   If-Match: <version>, as for jobs

Every change commits the job (or rollout), its history and its outbox row in one transaction;
the relay publishes the outbox (nothing is published from a request). Versions travel as ETag.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from croniter import croniter
from fastapi import Body, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from functions.ota import firmwares, jobs, presence, rollouts, schedule, signing
from functions.ota import settings as ota_settings
from functions.ota.events import Schedule
from functions.runtime import (
    BadRequest,
    InvalidData,
    NotFound,
    PayloadTooLarge,
    clients,
    http_function,
)

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
TEXT = r"^[^\x00-\x1f\x7f]*$"  # free text: no control characters
Version = Annotated[str, Path(pattern=firmwares.VERSION, description="Firmware version")]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FirmwareOut(BaseModel):
    version: str
    size: int
    sha256: str
    key: str = Field(description="Object key in MINIO_FIRMWARE_BUCKET")
    created_at: datetime
    signature: str | None = Field(
        description="base64 ed25519 signature of the bytes, as devices get it (null: unsigned)"
    )


class SigningKey(BaseModel):
    public_key: str | None = Field(
        description="PEM of the ed25519 key firmware signatures verify with (null: none set)"
    )


class FirmwareList(BaseModel):
    firmwares: list[FirmwareOut]


class DeviceIn(Strict):
    model: str = Field(min_length=1, max_length=128, pattern=TEXT)
    timezone: str = Field(min_length=1, max_length=64, description="IANA time zone")


class DeviceOut(BaseModel):
    device_id: str
    model: str
    timezone: str
    current_firmware: str | None
    last_seen: datetime | None = Field(description="Its latest status or coalesced heartbeat")
    online: bool = Field(description="Seen within OTA_ONLINE_WINDOW (rollouts wait for it)")
    reported_firmware: str | None = Field(description="The firmware its telemetry reports")
    battery: float | None = Field(description="Percent, from its telemetry")
    signal: float | None = Field(description="Link quality from its telemetry, e.g. RSSI dBm")
    uptime_s: int | None = Field(description="Seconds since it booted, from its telemetry")


def _online_since() -> datetime:
    return presence.online_since(datetime.now(UTC), ota_settings.telemetry().online_window)


class When(Strict):
    schedule_time: AwareDatetime | None = Field(
        default=None, description="ISO-8601 with offset; neither this nor cron: now"
    )
    cron: str | None = Field(default=None, max_length=200, pattern=TEXT,
                             description="Five fields: due at the next occurrence")  # fmt: skip
    timezone: str | None = Field(
        default=None, max_length=64, description="Of the cron; default: the device's zone"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> When:
        if self.schedule_time is not None and self.cron is not None:
            raise ValueError("give schedule_time or cron, not both")
        return self

    def request(self) -> jobs.ScheduleRequest:
        return jobs.ScheduleRequest(self.schedule_time, self.cron, self.timezone)


class JobCreate(When):
    device_id: str | None = Field(default=None, pattern=DEVICE_ID)
    device_ids: list[Annotated[str, Field(pattern=DEVICE_ID)]] | None = Field(
        default=None, min_length=1, description="A mass update: one job per device"
    )
    firmware_version: str = Field(pattern=firmwares.VERSION)

    @model_validator(mode="after")
    def _one_target(self) -> JobCreate:
        if (self.device_id is None) == (self.device_ids is None):
            raise ValueError("give device_id or device_ids (a mass update), not both or neither")
        if self.device_ids is not None and len(set(self.device_ids)) != len(self.device_ids):
            raise ValueError("device_ids holds a device twice")
        return self


class JobPatch(When):
    firmware_version: str | None = Field(default=None, pattern=firmwares.VERSION)

    @model_validator(mode="after")
    def _something(self) -> JobPatch:
        if not self.model_fields_set:
            raise ValueError("nothing to change: give firmware_version and/or a schedule")
        return self


class CancelIn(Strict):
    reason: str | None = Field(default=None, max_length=500, pattern=TEXT)


class JobOut(BaseModel):
    id: str
    device_id: str
    firmware_version: str
    status: jobs.Status
    status_reason: str | None
    version: int = Field(description="For If-Match; also the ETag")
    schedule: Schedule
    due_at: datetime
    created_at: datetime
    updated_at: datetime
    message_id: str | None = Field(description="The command last sent to the device (MQTT)")
    retries: int = Field(description="Re-dispatches after a silent deadline (ota-deadlines)")
    deadline_at: datetime | None = Field(description="When a silent job is overdue")
    rollout_id: str | None = Field(description="The rollout that released the job, if any")


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class JobsCreated(BaseModel):
    jobs: list[JobOut]


api = http_function("ota-api", summary="Firmware OTA: firmwares, devices, jobs and rollouts")
IF_MATCH = Header(alias="If-Match", description="The job version you last saw")


# --- firmwares -------------------------------------------------------------------------------

FIRMWARE_BODY = {
    "parameters": [
        {
            "name": signing.HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "base64 ed25519 signature of the bytes (else signed with the key)",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    },
}


@api.put(
    "/firmwares/{version}",
    openapi_extra=FIRMWARE_BODY,
    responses={200: {"model": FirmwareOut}, 201: {"model": FirmwareOut}},
)
async def put_firmware(version: Version, request: Request) -> JSONResponse:
    """Upload a firmware image (streamed, hashed and size-checked on the way). Header
    `X-Firmware-Signature`: its base64 ed25519 signature, checked with the firmware key;
    without it, the upload is signed with OTA_FIRMWARE_SIGNING_KEY (if set)."""
    limit = ota_settings.ota().firmware_max_bytes
    declared = request.headers.get("content-length", "")
    content_type = request.headers.get("content-type", "")
    is_form = content_type.lower().startswith("multipart/form-data")
    slack = 64 * 1024 if is_form else 0  # multipart framing around the file
    if declared.isdigit() and int(declared) > limit + slack:
        raise PayloadTooLarge(f"firmware exceeds OTA_FIRMWARE_MAX_BYTES ({limit} bytes)")
    chunks = firmwares.multipart_file(request.stream(), content_type) if is_form else None
    upload = await firmwares.receive(chunks or request.stream(), limit)
    try:
        if upload.size == 0:
            raise InvalidData("the firmware is empty", field="file" if is_form else "body")
        provided = request.headers.get(signing.HEADER)
        upload.signature = await run_in_threadpool(signing.signature_for, upload.file, provided)
        found, created = await run_in_threadpool(_store_firmware, version, upload)
    finally:
        upload.file.close()
    return JSONResponse(_out(FirmwareOut, found.as_json()), status_code=201 if created else 200)


def _store_firmware(version: str, upload: firmwares.Upload) -> tuple[firmwares.Firmware, bool]:
    existing = clients.postgres.transaction(lambda cur: firmwares.find(cur, version))
    if existing is None:
        bucket, key = ota_settings.buckets().firmware_bucket, upload.key(version)
        extra = {"ContentType": "application/octet-stream", "Metadata": {"sha256": upload.sha256}}
        clients.s3.call(lambda s3: s3.upload_fileobj(upload.file, bucket, key, ExtraArgs=extra))
        existing, created = clients.postgres.transaction(
            lambda cur: firmwares.insert(cur, version, upload)
        )
        if created:
            return existing, True
        if existing.key != key:  # another upload of other bytes won the version meanwhile
            clients.s3.call(lambda s3: s3.delete_object(Bucket=bucket, Key=key))
    if existing.sha256 != upload.sha256 or existing.size != upload.size:
        raise firmwares.FirmwareConflict(
            f"firmware {version} exists with other bytes (sha256 {existing.sha256})",
            field="version",
        )
    if existing.signature is None and upload.signature is not None:
        signature = upload.signature
        signed = clients.postgres.transaction(
            lambda cur: firmwares.add_signature(cur, version, signature)
        )
        return signed or existing, False
    return existing, False


@api.get("/signing-key", response_model=SigningKey)
def get_signing_key() -> dict[str, Any]:
    """The public key firmware signatures verify with: what devices are given to check them."""
    return {"public_key": signing.public_pem()}


@api.get("/firmwares", response_model=FirmwareList)
def list_firmwares() -> dict[str, Any]:
    found = clients.postgres.transaction(firmwares.listing)
    return {"firmwares": [f.as_json() for f in found]}


@api.get("/firmwares/{version}", response_model=FirmwareOut)
def get_firmware(version: Version) -> dict[str, Any]:
    found = clients.postgres.transaction(lambda cur: firmwares.find(cur, version))
    if found is None:
        raise NotFound(f"no firmware {version}", field="version")
    return found.as_json()


# --- devices ---------------------------------------------------------------------------------


@api.put("/devices/{device_id}", responses={200: {"model": DeviceOut}, 201: {"model": DeviceOut}})
def put_device(device_id: DeviceId, body: DeviceIn) -> JSONResponse:
    """Register a device or update its model and time zone."""
    schedule.zone(body.timezone)
    device, created = clients.postgres.transaction(
        lambda cur: jobs.put_device(cur, device_id, body.model, body.timezone)
    )
    shown = _out(DeviceOut, device.as_json(_online_since()))
    return JSONResponse(shown, status_code=201 if created else 200)


@api.get("/devices/{device_id}", response_model=DeviceOut)
def get_device(device_id: DeviceId) -> dict[str, Any]:
    device = clients.postgres.transaction(lambda cur: jobs.get_device(cur, device_id))
    if device is None:
        raise NotFound(f"no device {device_id}", field="device_id")
    return device.as_json(_online_since())


# --- jobs ------------------------------------------------------------------------------------


def _out(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` as the response model serialises it (what the routes with a response_model do)."""
    return model.model_validate(data).model_dump(mode="json")


def _job(job: jobs.Job, status: int = 200) -> JSONResponse:
    body = _out(JobOut, job.as_json())
    return JSONResponse(body, status_code=status, headers={"ETag": f'"{job.version}"'})


def _if_match(value: str | None) -> int:
    if value is None:
        raise jobs.PreconditionRequired(
            "send If-Match: <version> (the version you last saw, or its ETag)", field="If-Match"
        )
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 9:
        raise BadRequest(f"If-Match must be a version, got {value!r}", field="If-Match")
    return int(text)


@api.post(
    "/jobs",
    status_code=201,
    responses={201: {"model": JobOut | JobsCreated, "description": "The job, or the jobs"}},
)
def create_jobs(body: JobCreate) -> JSONResponse:
    """One job, or one per device of `device_ids` (a mass update, all in one transaction)."""
    devices = body.device_ids or [body.device_id or ""]
    limit = ota_settings.ota().mass_max_devices
    if len(devices) > limit:
        raise InvalidData(f"at most {limit} devices per mass update", field="device_ids")
    tolerance = ota_settings.ota().schedule_past_tolerance_s
    field_name = "device_ids" if body.device_ids is not None else "device_id"
    created = clients.postgres.transaction(
        lambda cur: jobs.create(cur, devices, body.firmware_version, body.request(),
                                tolerance_s=tolerance, field_name=field_name)
    )  # fmt: skip
    if body.device_ids is None:
        return _job(created[0], 201)
    return JSONResponse(
        _out(JobsCreated, {"jobs": [j.as_json() for j in created]}), status_code=201
    )


@api.get("/jobs", response_model=JobList)
def list_jobs(
    status: jobs.Status | None = None,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    rollout_id: Annotated[str | None, Query(max_length=64, description="Its jobs only")] = None,
) -> dict[str, Any]:
    """Jobs in creation order, keyset-paginated: follow `next_cursor` until it is null."""
    found, next_cursor = clients.postgres.transaction(
        lambda cur: jobs.page(cur, status=status, device_id=device_id, limit=limit,
                              cursor=cursor, rollout_id=rollout_id)
    )  # fmt: skip
    return {"jobs": [job.as_json() for job in found], "next_cursor": next_cursor}


@api.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str) -> JSONResponse:
    job = clients.postgres.transaction(lambda cur: jobs.get(cur, job_id))
    if job is None:
        raise NotFound(f"no job {job_id}", field="job_id")
    return _job(job)


@api.patch("/jobs/{job_id}", response_model=JobOut)
def patch_job(
    job_id: str, body: JobPatch, if_match: Annotated[str | None, IF_MATCH] = None
) -> JSONResponse:
    """Reschedule a job or change its firmware while it is not yet dispatched."""
    expected = _if_match(if_match)
    changes = jobs.Changes(
        firmware_version=body.firmware_version,
        when=body.request() if body.model_fields_set - {"firmware_version"} else None,
    )
    tolerance = ota_settings.ota().schedule_past_tolerance_s
    job = clients.postgres.transaction(
        lambda cur: jobs.update(cur, job_id, expected, changes, tolerance_s=tolerance)
    )
    return _job(job)


@api.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(
    job_id: str,
    body: Annotated[CancelIn | None, Body()] = None,
    if_match: Annotated[str | None, IF_MATCH] = None,
) -> JSONResponse:
    """Cancel a job that has not finished."""
    expected = _if_match(if_match)
    reason = body.reason if body else None
    job = clients.postgres.transaction(lambda cur: jobs.cancel(cur, job_id, expected, reason))
    return _job(job)


# --- rollouts --------------------------------------------------------------------------------

Percent = Annotated[float, Field(gt=0, le=100)]


class Selector(Strict):
    model: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)
    current_firmware: str | None = Field(default=None, pattern=firmwares.VERSION)

    @model_validator(mode="after")
    def _something(self) -> Selector:
        if self.model is None and self.current_firmware is None:
            raise ValueError("a selector names model and/or current_firmware")
        return self


class Ramp(Strict):
    base_per_minute: float = Field(gt=0, le=1_000_000, description="Releases per minute at first")
    factor: float = Field(ge=1, le=100, description="The rate's multiplier per step")
    every_succeeded: int = Field(ge=1, description="A step after this many more done jobs")


class Abort(Strict):
    failure_percent: float = Field(
        ge=0, le=100, description="A wave whose error + timed_out exceed this share pauses it"
    )
    min_finished: int = Field(default=1, ge=1, description="Finished jobs before it applies")


class Window(Strict):
    cron: str = Field(
        max_length=200,
        pattern=TEXT,
        description="Five fields: it opens then, in each device's zone",
    )
    duration_minutes: int = Field(ge=1, le=7 * 24 * 60)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ValueError(f"not a five-field cron expression: {cron!r}")
        return cron


class RolloutCreate(Strict):
    firmware_version: str = Field(pattern=firmwares.VERSION)
    devices: list[Annotated[str, Field(pattern=DEVICE_ID)]] | None = Field(
        default=None, min_length=1, description="In the order they join the waves"
    )
    selector: Selector | None = Field(default=None, description="Devices ordered by id")
    waves: list[Percent] = Field(
        default=[1, 10, 100], min_length=1, max_length=100,
        description="Cumulative percents of the devices, ascending, the last 100",
    )  # fmt: skip
    max_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    ramp: Ramp | None = None
    success_threshold: float = Field(
        default=95, gt=0, le=100, description="Percent of a wave done before the next starts"
    )
    abort: Abort = Field(default_factory=lambda: Abort(failure_percent=10, min_finished=10))
    maintenance_window: Window | None = None

    @field_validator("devices")
    @classmethod
    def _once_each(cls, devices: list[str] | None) -> list[str] | None:
        if devices is not None and len(set(devices)) != len(devices):
            raise ValueError("devices holds a device twice")
        return devices

    @field_validator("waves")
    @classmethod
    def _ascending_to_100(cls, percents: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(percents)):
            raise ValueError(f"waves must ascend strictly, got {[f'{p:g}' for p in percents]}")
        if percents[-1] != 100:
            raise ValueError(f"the last wave must be 100 (every device), got {percents[-1]:g}")
        return percents

    @model_validator(mode="after")
    def _one_target(self) -> RolloutCreate:
        if (self.devices is None) == (self.selector is None):
            raise ValueError("give devices or selector, not both or neither")
        return self

    def spec(self) -> rollouts.Spec:
        dump = self.model_dump(mode="json")
        return rollouts.Spec(
            firmware_version=self.firmware_version,
            devices=self.devices,
            selector=self.selector.model_dump(exclude_none=True) if self.selector else None,
            waves=self.waves,
            success_threshold=self.success_threshold,
            abort=dump["abort"],
            max_per_minute=self.max_per_minute,
            ramp=dump["ramp"],
            maintenance_window=dump["maintenance_window"],
        )


class WaveOut(BaseModel):
    percent: float
    devices: list[str] = Field(description="Its device ids, in the order they were given")
    status: Literal["pending", "running", "paused", "done", "cancelled"]
    counts: dict[str, int] = Field(description="Its devices by job status (pending: no job yet)")


class CancelledJob(BaseModel):
    job_id: str
    device_id: str
    status: str


class Cancellation(BaseModel):
    cancelled_jobs: int = Field(description="Released jobs not yet dispatched, now cancelled")
    not_started: int = Field(description="Devices never released, left out")
    dispatched: list[CancelledJob] = Field(description="Jobs already with their devices")


class RolloutOut(BaseModel):
    id: str
    status: Literal["running", "paused", "done", "cancelled"]
    version: int = Field(description="For If-Match; also the ETag")
    reason: str | None = Field(description="Why it paused, finished or was cancelled")
    firmware_version: str
    current_wave: int = Field(description="The latest wave started (1-based)")
    waves: list[WaveOut]
    counts: dict[str, int] = Field(description="Every device by job status")
    device_count: int
    success_threshold: float
    abort: Abort
    max_per_minute: int | None
    ramp: Ramp | None
    maintenance_window: Window | None
    selector: Selector | None
    cancellation: Cancellation | None = Field(description="What POST /cancel stopped")
    created_at: datetime
    updated_at: datetime


def _rollout(body: dict[str, Any], status: int = 200) -> JSONResponse:
    shown = _out(RolloutOut, body)
    return JSONResponse(shown, status_code=status, headers={"ETag": f'"{body["version"]}"'})


ROLLOUT_IF_MATCH = Header(alias="If-Match", description="The rollout version you last saw")


@api.post("/rollouts", status_code=201, response_model=RolloutOut)
def create_rollout(body: RolloutCreate) -> JSONResponse:
    """Roll a firmware out in waves; ota-rollouts starts the first one."""
    limit = ota_settings.rollout().max_devices
    if body.devices is not None and len(body.devices) > limit:
        raise InvalidData(f"at most {limit} devices per rollout", field="devices")
    created = clients.postgres.transaction(lambda cur: rollouts.create(cur, body.spec()))
    return _rollout(created, 201)


@api.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: str) -> JSONResponse:
    found = clients.postgres.transaction(lambda cur: rollouts.get(cur, rollout_id))
    if found is None:
        raise NotFound(f"no rollout {rollout_id}", field="rollout_id")
    return _rollout(found)


@api.post("/rollouts/{rollout_id}/pause", response_model=RolloutOut)
def pause_rollout(
    rollout_id: str,
    body: Annotated[CancelIn | None, Body()] = None,
    if_match: Annotated[str | None, ROLLOUT_IF_MATCH] = None,
) -> JSONResponse:
    """Pause a running rollout: nothing more is dispatched (undispatched jobs withdrawn)."""
    expected = _if_match(if_match)
    reason = body.reason if body else None
    return _rollout(clients.postgres.transaction(
        lambda cur: rollouts.pause_by_request(cur, rollout_id, expected, reason)))  # fmt: skip


@api.post("/rollouts/{rollout_id}/resume", response_model=RolloutOut)
def resume_rollout(
    rollout_id: str, if_match: Annotated[str | None, ROLLOUT_IF_MATCH] = None
) -> JSONResponse:
    """Resume a paused rollout; the wave it paused in goes on to its end."""
    expected = _if_match(if_match)
    return _rollout(
        clients.postgres.transaction(lambda cur: rollouts.resume(cur, rollout_id, expected))
    )


@api.post("/rollouts/{rollout_id}/cancel", response_model=RolloutOut)
def cancel_rollout(
    rollout_id: str,
    body: Annotated[CancelIn | None, Body()] = None,
    if_match: Annotated[str | None, ROLLOUT_IF_MATCH] = None,
) -> JSONResponse:
    """Cancel a rollout: undispatched jobs cancelled, dispatched ones reported in
    `cancellation.dispatched` (they run to their end)."""
    expected = _if_match(if_match)
    reason = body.reason if body else None
    return _rollout(clients.postgres.transaction(
        lambda cur: rollouts.cancel(cur, rollout_id, expected, reason)))  # fmt: skip


ota_api = api.target
