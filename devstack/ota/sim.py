"""Simulated OTA devices: `objectflow simulate devices` (docs/ota.md "Device simulator").

N devices in one asyncio process, each its own MQTT session (client id `<prefix>-<n>`,
persistent: commands sent while it is offline are queued by the broker and delivered at QoS 1
when it reconnects), subscribed to `commands/<device_id>/ota`. On a command a device downloads
the firmware through the presigned URL, checks its sha256 and size and, holding the firmware
key (OTA_FIRMWARE_PUBLIC_KEY, else the signing key's; functions/ota/signing.py), the command's
ed25519 signature over the bytes (a mismatch or a missing signature reports `error`),
then reports `downloading` (with progress), `flashing` and `done` (or `error` for a failing
device) to `status/<device_id>/update` at QoS 1 over a flaky link: statuses dropped,
duplicated, held back behind the next one (reordered) and delayed, and the connection cut now
and then (the device reconnects and publishes again what the broker had not acknowledged).

While connected, every device not silent sends a heartbeat to `telemetry/<device_id>` at QoS 0
on connecting and every `heartbeat_s` seconds (`{"ts", "firmware", "battery", "signal",
"uptime_s"}`; its firmware is the last one it flashed). Silent devices (`silent_rate`,
`silent_devices`) take commands but send none; removing one from `Stats.silent` while running
makes it heartbeat within a second (a device coming back into coverage).

Every device authenticates as the shared device user (`MQTT_USER`/`MQTT_PASSWORD`; see
docs/ota.md for per-device accounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from functions.ota import signing

STATUSES = ("downloading", "flashing", "done", "error")


def command_topic(device_id: str) -> str:
    return f"commands/{device_id}/ota"


def status_topic(device_id: str, prefix: str = "") -> str:
    return f"{prefix}status/{device_id}/update"


def telemetry_topic(device_id: str) -> str:
    return f"telemetry/{device_id}"


@dataclass(frozen=True)
class Behaviour:
    """How the devices and their link misbehave (rates are probabilities per status/command)."""

    firmware_ms: float = 500  # time spent flashing
    fail_rate: float = 0.0  # a device whose flash fails: reports error
    fail_devices: frozenset[str] = frozenset()  # these fail too, whatever the rate
    drop_rate: float = 0.0  # a status never sent
    dup_rate: float = 0.0  # a status sent twice
    reorder_rate: float = 0.0  # a status held back and sent after the next one
    delay_ms: float = 0.0  # up to this much added before each status
    disconnect_rate: float = 0.0  # the connection cut after a status
    heartbeat_s: float = 10.0  # between heartbeats; 0: none at all
    silent_rate: float = 0.0  # a device that sends no heartbeat (offline for rollouts)
    silent_devices: frozenset[str] = frozenset()  # these are silent too, whatever the rate
    firmware: str = "sim-0"  # what a device runs before its first update
    seed: int | None = None


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    # Put before `status/<id>/update`: a benchmark's own bridge route (bench/ota_status), so
    # its statuses never reach the product's device.status.
    status_prefix: str = ""


def stack_broker() -> Broker:
    """The stack's broker as its settings name it (MQTT_BROKER_URL, MQTT_USER, MQTT_PASSWORD;
    with `devstack.dlq.with_stack_settings()`, from .devstack/env)."""
    from functions.runtime import settings

    mqtt = settings.mqtt()
    password = mqtt.password.get_secret_value() if mqtt.password else None
    return Broker(mqtt.host, mqtt.port, mqtt.user, password)


@dataclass
class Stats:
    devices: int = 0
    connected: int = 0
    commands: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    link: Counter[str] = field(default_factory=Counter)  # dropped, duplicated, reordered, ...
    finished: dict[str, str] = field(default_factory=dict)  # device id -> its final status
    command_times: dict[str, float] = field(default_factory=dict)  # device id -> first command
    failing: set[str] = field(default_factory=set)  # devices whose flash fails (--fail-rate)
    silent: set[str] = field(default_factory=set)  # devices sending no heartbeat (discard: wake)
    heartbeats: int = 0

    def line(self) -> str:
        kinds = " ".join(f"{k} {self.statuses[k]}" for k in STATUSES)
        link = " ".join(f"{k} {v}" for k, v in sorted(self.link.items()))
        return (
            f"connected {self.connected}/{self.devices} · commands {self.commands} · "
            f"heartbeats {self.heartbeats} ({len(self.silent)} silent) · "
            f"statuses: {kinds}" + (f" · link: {link}" if link else "")
        )


class Device:
    def __init__(
        self,
        device_id: str,
        broker: Broker,
        behaviour: Behaviour,
        stats: Stats,
        http: aiohttp.ClientSession,
        rng: random.Random,
        connect_slots: asyncio.Semaphore,
        trusted_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.id, self.broker, self.behaviour, self.stats = device_id, broker, behaviour, stats
        self.http, self.rng, self.connect_slots = http, rng, connect_slots
        self.trusted_key = trusted_key
        self.failing = rng.random() < behaviour.fail_rate or device_id in behaviour.fail_devices
        if self.failing:
            stats.failing.add(device_id)
        # silent_rate draws only when set, so seeded runs without it misbehave as before
        silent = behaviour.silent_rate and rng.random() < behaviour.silent_rate
        if silent or device_id in behaviour.silent_devices:
            stats.silent.add(device_id)
        self.firmware = behaviour.firmware
        self.started = time.monotonic()
        self.readings = random.Random(device_id)  # battery and signal, apart from the link's rng
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # statuses to send
        self.held: dict[str, Any] | None = None  # a status held back (reordering)
        self.handled: set[str] = set()  # command message ids already worked on
        self.working: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected (reconnecting after a cut) until cancelled."""
        while True:
            try:
                async with self.connect_slots:
                    client = aiomqtt.Client(
                        self.broker.host, self.broker.port,
                        username=self.broker.username, password=self.broker.password,
                        identifier=self.id, clean_session=False, keepalive=60,
                    )  # fmt: skip
                    await client.__aenter__()
                try:
                    await client.subscribe(command_topic(self.id), qos=1)
                    self.stats.connected += 1
                    try:
                        async with asyncio.TaskGroup() as tasks:
                            tasks.create_task(self._receive(client))
                            tasks.create_task(self._send(client))
                            if self.behaviour.heartbeat_s:
                                tasks.create_task(self._heartbeat(client))
                    finally:
                        self.stats.connected -= 1
                finally:
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
            except* (aiomqtt.MqttError, Disconnect):
                self.stats.link["reconnects"] += 1
            await asyncio.sleep(0.2 + self.rng.random())

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                command = json.loads(bytes(message.payload))
            except ValueError:
                continue
            self.stats.command_times.setdefault(self.id, time.time())
            if command.get("message_id") in self.handled:  # a QoS 1 redelivery
                self.stats.link["commands redelivered"] += 1
                continue
            self.handled.add(command["message_id"])
            self.stats.commands += 1
            task = asyncio.create_task(self.update(command))
            self.working.add(task)
            task.add_done_callback(self.working.discard)

    async def update(self, command: dict[str, Any]) -> None:
        """Download, verify, flash and report, as a device does with one command."""

        def report(status: str, **extra: Any) -> None:
            self.outbox.put_nowait({
                "job_id": command["job_id"], "message_id": command["message_id"],
                "status": status, **extra, "ts": datetime.now(UTC).isoformat(),
            })  # fmt: skip

        report("downloading", progress=0)
        try:
            image = bytearray()
            async with self.http.get(command["url"]) as response:
                response.raise_for_status()
                total = int(command.get("size") or 0)
                halfway = False
                async for chunk in response.content.iter_chunked(64 * 1024):
                    image += chunk
                    if total and not halfway and len(image) * 2 >= total:
                        halfway = True
                        report("downloading", progress=50)
        except (TimeoutError, aiohttp.ClientError) as exc:
            report("error", error=f"download failed: {exc}")
            return
        size = len(image)
        if hashlib.sha256(image).hexdigest() != command.get("sha256") or size != command.get(
            "size", size
        ):
            report("error", error="sha256 mismatch")
            return
        signature = command.get("signature")
        if self.trusted_key is not None and not (
            isinstance(signature, str) and signing.verifies(self.trusted_key, signature, image)
        ):
            report("error", error="signature mismatch")
            return
        report("downloading", progress=100)
        report("flashing")
        await asyncio.sleep(self.behaviour.firmware_ms / 1000 * (0.5 + self.rng.random()))
        if self.failing:
            report("error", error="flash failed")
            return
        self.firmware = command.get("firmware_version", self.firmware)
        report("done")

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        """A heartbeat on connecting and every heartbeat_s while not silent (checked at least
        every second, so a device woken from silence is seen at once)."""
        every = self.behaviour.heartbeat_s
        last: float | None = None
        while True:
            now = time.monotonic()
            if self.id not in self.stats.silent and (last is None or now - last >= every):
                beat = {
                    "ts": datetime.now(UTC).isoformat(), "firmware": self.firmware,
                    "battery": round(20 + 80 * self.readings.random(), 1),
                    "signal": -round(50 + 50 * self.readings.random()),
                    "uptime_s": int(now - self.started),
                }  # fmt: skip
                await client.publish(telemetry_topic(self.id), json.dumps(beat), qos=0)
                self.stats.heartbeats += 1
                last = now
            await asyncio.sleep(min(every, 1.0))

    def _finish(self, status: dict[str, Any]) -> None:
        """The device's last status left it (or was lost on the link)."""
        if status["status"] in ("done", "error"):
            self.stats.finished[self.id] = status["status"]

    async def _send(self, client: aiomqtt.Client) -> None:
        """Publish queued statuses over the flaky link; a status not acknowledged because the
        connection dropped stays first in line for the next connection."""
        b = self.behaviour
        while True:
            try:  # a held status waits for the next one, or a second at most
                status = await asyncio.wait_for(self.outbox.get(), 1.0 if self.held else None)
            except TimeoutError:
                status = None
            batch: list[dict[str, Any]] = []
            if status is not None:
                if b.delay_ms:
                    await asyncio.sleep(self.rng.random() * b.delay_ms / 1000)
                if self.rng.random() < b.drop_rate:
                    self.stats.link["dropped"] += 1
                    self._finish(status)
                elif self.held is None and self.rng.random() < b.reorder_rate:
                    self.held = status
                    self.stats.link["reordered"] += 1
                    continue
                else:
                    batch.append(status)
                    if self.rng.random() < b.dup_rate:
                        batch.append(status)
                        self.stats.link["duplicated"] += 1
            if self.held is not None:
                batch.append(self.held)
                self.held = None
            for n, item in enumerate(batch):
                try:
                    await client.publish(
                        status_topic(self.id, self.broker.status_prefix), json.dumps(item), qos=1
                    )
                except aiomqtt.MqttError:
                    self._requeue(batch[n:])
                    raise
                self.stats.statuses[item["status"]] += 1
                self._finish(item)
            if batch and self.rng.random() < b.disconnect_rate:
                self.stats.link["disconnects"] += 1
                raise Disconnect

    def _requeue(self, unsent: list[dict[str, Any]]) -> None:
        pending = [self.outbox.get_nowait() for _ in range(self.outbox.qsize())]
        self.held = None
        for item in [*unsent, *pending]:
            self.outbox.put_nowait(item)


class Disconnect(Exception):
    """The simulated link cut the connection."""


async def simulate(
    device_ids: list[str],
    broker: Broker,
    behaviour: Behaviour,
    stats: Stats,
    *,
    until: Callable[[], bool],
    connect_concurrency: int = 200,
) -> None:
    """Run the devices until `until()` holds (checked every 0.2 s), then disconnect them. They
    trust the firmware key the settings name (none: they check no signature)."""
    trusted_key = signing.verifier()
    rng = random.Random(behaviour.seed)
    slots = asyncio.Semaphore(connect_concurrency)
    stats.devices = len(device_ids)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        devices = [
            Device(
                d, broker, behaviour, stats, http, random.Random(rng.random()), slots, trusted_key
            )
            for d in device_ids
        ]
        tasks = [asyncio.create_task(device.run()) for device in devices]
        try:
            while not until():
                await asyncio.sleep(0.2)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def register(api: str, device_ids: list[str], model: str = "sim") -> list[str]:
    """PUT /devices/<id> on ota-api for every device (zone UTC); the ids that failed."""
    failed: list[str] = []
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one(device_id: str) -> None:
            async with limit:
                try:
                    async with http.put(
                        f"{api}/devices/{device_id}", json={"model": model, "timezone": "UTC"}
                    ) as answer:
                        if answer.status not in (200, 201):
                            failed.append(device_id)
                except aiohttp.ClientError:
                    failed.append(device_id)

        await asyncio.gather(*(one(d) for d in device_ids))
    return failed
