"""ota-dispatcher — sends a ready job's command to its device over MQTT, then marks it dispatched.

Fed by the Kafka source `ota-dispatch-commands` (consumer group `command-dispatcher`) on
`job.events`, which sends every event of the topic straight to this function: all but
`job.ready_to_execute` (other job events, `rollout.*`) are acknowledged untouched. For a job
still ready at the event's version:

1. the shared rate limit (`OTA_DISPATCH_RATE` per second over every replica; `limits`' moving
   window in Redis): over it, 503 with Retry-After, so the source's backoff paces the commands;
   a job of a rollout with `max_per_minute` also takes a token of that rollout's own window
   (`ota:dispatch:rollout:<id>`: in any 1, 5, 10, 30 or 60 s its burst plus that much of
   its rate), so a backlog on `job.events` (a restart, another mass update) cannot bring its
   jobs, released at that pace by ota-rollouts, to the devices faster than asked;
2. a claim in Redis, so two deliveries of one event at once publish one command:

       ota:dispatching:<job_id>:<version>   string (expiry CLAIM_S) while a replica publishes

3. the command (functions.ota.command) published at QoS 1 to `commands/<device_id>/ota`,
   waiting for the PUBACK, through this replica's circuit breaker (pybreaker, state per
   replica): after OTA_BREAKER_FAILURES failed publishes it answers 503 at once without
   touching MQTT, and lets one publish try again after OTA_BREAKER_RESET_S;
4. only then, in a short transaction of its own, ready -> dispatched (version-guarded) with
   its job.updated outbox row. No database transaction is open across the publish.

A redelivered or stale event (the job dispatched, cancelled or patched meanwhile) publishes
nothing. A crash between 3 and 4 leaves the job ready: the redelivery sends the same command
(same message_id) again, which the device acknowledges once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

import pybreaker

from functions.ota import command, firmwares, jobs, waves
from functions.ota import settings as ota_settings
from functions.ota.events import KINDS as JOB_KINDS
from functions.ota.events import ROLLOUT_KINDS, JobEvent, RolloutEvent, cloudevent_type
from functions.runtime import clients
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.clients import core, mqtt
from functions.runtime.errors import DependencyUnavailable, InvalidData, ObjectflowError

if TYPE_CHECKING:
    from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("objectflow.ota.dispatcher")
READY = "job.ready_to_execute"
ROLLOUT_WINDOWS = (1, 5, 10, 30, 60)  # seconds: where a rollout's pace is held at dispatch
CLAIM_S = 60  # longer than a publish within the retry budget; a crashed holder frees it then


class RateLimited(ObjectflowError):
    """Over OTA_DISPATCH_RATE: 503 with Retry-After, so the event is redelivered later."""

    status = 503
    code = "rate-limited"


class InFlight(ObjectflowError):
    """Another delivery of the same readiness is publishing it: retried, then found stale."""

    status = 503
    code = "dispatch-in-flight"


@functools.cache
def limiter() -> MovingWindowRateLimiter:
    """The moving-window limiter on the process's Redis connection pool."""
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    pool = clients.redis.client().connection_pool
    return MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=pool))


def take_rate_token() -> None:
    from limits import RateLimitItemPerSecond

    cfg = ota_settings.dispatch()
    rate = RateLimitItemPerSecond(cfg.dispatch_rate)
    if not clients.redis.call(lambda _r: limiter().hit(rate, cfg.dispatch_rate_key)):
        raise RateLimited(f"over OTA_DISPATCH_RATE ({cfg.dispatch_rate} commands/s); retry later")


def take_rollout_token(rollout_id: str, per_minute: float) -> None:
    """A token of the rollout's own moving windows: in any window of w seconds (1, 5, 10, 30,
    60) at most what its release bucket can let go, its burst plus w seconds of the rate, so
    jobs released at the pace never wait here and a bunch of them cannot go faster."""
    from limits import RateLimitItemPerSecond

    burst = waves.capacity(per_minute)
    items = [RateLimitItemPerSecond(int(burst + per_minute * w / 60), w) for w in ROLLOUT_WINDOWS]
    key = f"ota:dispatch:rollout:{rollout_id}"

    def take(_r: Any) -> bool:
        window = limiter()
        if not all(window.test(item, key) for item in items):
            return False
        return all([window.hit(item, key) for item in items])

    if not clients.redis.call(take):
        raise RateLimited(
            f"over rollout {rollout_id}'s max_per_minute ({per_minute:g}); retry later"
        )


class Channel:
    """This replica's MQTT session for commands, behind its circuit breaker.

    A session that failed is closed, never reused: paho would otherwise queue the command and
    send it after reconnecting, long after we answered 503 and the event was redelivered.
    """

    def __init__(self) -> None:
        cfg = ota_settings.dispatch()
        self.timeout = cfg.mqtt_timeout_s
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=cfg.breaker_failures, reset_timeout=cfg.breaker_reset_s, name="mqtt"
        )
        self._publisher: mqtt.Publisher | None = None
        self._lock = threading.Lock()
        self._client_id = f"objectflow-ota-dispatcher-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def send(self, topic: str, payload: bytes) -> None:
        try:
            self.breaker.call(self._publish, topic, payload)
        except pybreaker.CircuitBreakerError as exc:
            raise DependencyUnavailable(
                "mqtt", f"circuit breaker open after repeated failures ({exc}); not tried"
            ) from None

    def _publish(self, topic: str, payload: bytes) -> None:
        try:
            self._connected().publish(topic, payload, qos=1, timeout=self.timeout)
        except Exception as exc:
            self.close()
            if isinstance(exc, ObjectflowError):
                raise
            raise DependencyUnavailable("mqtt", core.first_line(exc)) from exc

    def _connected(self) -> mqtt.Publisher:
        with self._lock:
            if self._publisher is not None and not self._publisher.client.is_connected():
                self._close_locked()
            if self._publisher is None:
                client = clients.call("mqtt", lambda: mqtt.connect(self._client_id))
                self._publisher = mqtt.Publisher(client)
            return self._publisher

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._publisher is not None:
            self._publisher.client.loop_stop()
            self._publisher.client.disconnect()
            self._publisher = None


@functools.cache
def channel() -> Channel:
    return Channel()


def dispatch(event: JobEvent) -> jobs.Job | None:
    """Send the command of the job `event` made ready; the dispatched job, or None if the
    event is stale (nothing published)."""
    job, firmware, per_minute = clients.postgres.transaction(lambda cur: _load_paced(cur, event))
    if not _still_ready(job, event):
        return None
    take_rate_token()
    if job.rollout_id is not None and per_minute is not None:
        take_rollout_token(job.rollout_id, per_minute)
    claim = f"ota:dispatching:{job.id}:{job.version}"
    if not clients.redis.call(lambda r: r.set(claim, 1, nx=True, ex=CLAIM_S)):
        raise InFlight(f"job {job.id} is being dispatched by another delivery")
    try:
        # Read again under the claim: a delivery that held it before may have dispatched it.
        job, firmware = clients.postgres.transaction(lambda cur: _load(cur, event))
        if not _still_ready(job, event):
            return None
        cmd = command.build(job, firmware)
        channel().send(command.topic(job.device_id), cmd.payload())
        done = clients.postgres.transaction(
            lambda cur: jobs.dispatched(cur, job.id, job.version, cmd.message_id)
        )
    finally:
        _release(claim)
    if done is None:
        log.warning("job changed while its command was sent", extra={"job_id": job.id})
    return done


def _load(cur: Any, event: JobEvent) -> tuple[jobs.Job, firmwares.Firmware]:
    job = jobs.get(cur, event.job_id)
    if job is None:
        raise InvalidData(f"unknown job {event.job_id}", field="job_id")
    if job.device_id != event.device_id:
        raise InvalidData(
            f"job {job.id} belongs to device {job.device_id!r}, not {event.device_id!r}",
            field="device_id",
        )
    firmware = firmwares.find(cur, job.firmware_version)
    assert firmware is not None  # a foreign key of the job
    return job, firmware


def _load_paced(cur: Any, event: JobEvent) -> tuple[jobs.Job, firmwares.Firmware, float | None]:
    """`_load`, and the max_per_minute of the job's rollout if it has one (a ramp is paced
    where jobs are released), in the same transaction."""
    job, firmware = _load(cur, event)
    if job.rollout_id is None:
        return job, firmware, None
    cur.execute(
        "SELECT spec -> 'max_per_minute' FROM ota.rollouts WHERE id = %s", (job.rollout_id,)
    )
    row = cur.fetchone()
    pace = float(row[0]) if row and isinstance(row[0], int | float) else None
    return job, firmware, pace


def _still_ready(job: jobs.Job, event: JobEvent) -> bool:
    if job.status == "ready" and job.version == event.version:
        return True
    log.info(
        "stale ready_to_execute: nothing sent",
        extra={"job_id": job.id, "status": job.status, "version": job.version},
    )
    return False


def _release(claim: str) -> None:
    """The claim is only needed while publishing; if Redis is gone now, it expires."""
    try:
        clients.redis.call(lambda r: r.delete(claim))
    except ObjectflowError as exc:
        log.warning("dispatch claim left to expire", extra={"claim": claim, "error": exc.detail})


@cloudevent_function(
    "ota-dispatcher", accepts=[cloudevent_type(kind) for kind in (*JOB_KINDS, *ROLLOUT_KINDS)]
)
def ota_dispatcher(event: Event[JobEvent | RolloutEvent]) -> None:
    if isinstance(event.data, RolloutEvent):
        return None  # the rollout's own events share the topic; its jobs come as job events
    if event.type != cloudevent_type(event.data.type):
        raise InvalidData(f"data.type {event.data.type!r} contradicts {event.type}", field="type")
    if event.data.type != READY:
        return None  # the source carries every job event; only readiness asks for a command
    job = dispatch(event.data)
    if job is not None:
        log.info("command sent", extra={"job_id": job.id, "message_id": job.message_id})
    return None
