"""The camera step of `objectflow demo`: a simulated camera's capture through the running runtime.

Publishes a thermal-looking PNG in chunks on MQTT `camera/<uid>/image_json`, as a camera without
an image id does, and prints what happened at each step: the chunks in Redis, the object in
thermo-raw, the device row, the image row and the RabbitMQ `raw.created` message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pika
import psycopg2
import requests
from matplotlib import pyplot
from rich.console import Console
from rich.table import Table

from devstack import wiring
from devstack.camera import sim as camera_sim
from devstack.demo import wait
from functions.runtime import clients, settings

CHUNKS = 8
ORDER = 20  # after echo


def thermal_png() -> bytes:
    """A small heat map, so the object in MinIO is a real image worth opening."""
    y, x = np.mgrid[-1:1:96j, -1:1:128j]
    heat = np.exp(-4 * ((x - 0.3) ** 2 + (y + 0.2) ** 2)) + 0.3 * np.exp(-9 * (x + 0.5) ** 2)
    buffer = io.BytesIO()
    pyplot.imsave(buffer, heat, cmap="inferno", format="png")
    return buffer.getvalue()


def run(env: dict[str, str], console: Console) -> bool:
    """Push one capture through the pipeline; True when every step was seen."""
    values = wiring.default()
    broker = f"http://127.0.0.1:{values.local.broker_port}/health"
    try:
        requests.get(broker, timeout=2).raise_for_status()
    except requests.RequestException:
        console.print("[red]the local runtime is not running: start it with `make up`[/]")
        return False
    for name, value in env.items():  # the caller's environment wins, as in the runtime
        os.environ.setdefault(name, value)
    settings.reset()
    clients.reset()

    camera = f"demo-cam-{uuid.uuid4().hex[:6]}"
    image = thermal_png()
    channel = _bound_queue(env)
    client = clients.mqtt.connect(f"objectflow-demo-{camera}")
    started = time.monotonic()
    camera_sim.publish(client, camera, camera_sim.Capture(camera, image, CHUNKS).payloads())
    client.disconnect()

    table = Table(title=f"camera: one capture of {camera} ({len(image)} bytes in {CHUNKS} chunks)")
    for column in ("step", "seen after", "what"):
        table.add_column(column)

    def step(label: str, found: Any, describe: Callable[[Any], str]) -> bool:
        after = f"{time.monotonic() - started:.2f}s" if found else "-"
        table.add_row(label, after, describe(found) if found else "[red]not seen in 30s[/]")
        return bool(found)

    ok = step(
        "chunks published on MQTT",
        True,
        lambda _: f"{CHUNKS} messages on {camera_sim.topic(camera)} (no image_id: camera session)",
    )
    key = wait(lambda: _object_key(env, camera))
    stored = (
        clients.s3.client().get_object(Bucket=env["MINIO_RAW_BUCKET"], Key=key) if key else None
    )
    same = stored is not None and _sha(stored["Body"].read()) == _sha(image)
    ok &= (
        step(
            "object in thermo-raw",
            key,
            lambda k: (
                f"{k}, sha256 {_sha(image)[:16]}... {'matches' if same else '[red]DIFFERS[/]'}"
            ),
        )
        and same
    )
    device = wait(lambda: _query(env, "SELECT id, device_uid, created_at FROM thermo.devices "
                                  "WHERE device_uid = %s", camera))  # fmt: skip
    ok &= step("device row", device, lambda d: f"thermo.devices id={d[0]} device_uid={d[1]}")
    row = wait(lambda: _query(env, "SELECT id, image_id, status, checksum, size FROM "
                               "thermo.image_objects WHERE object_key = %s", key))  # fmt: skip
    ok &= step(
        "image row",
        row,
        lambda r: f"thermo.image_objects id={r[0]} image_id={r[1]} status={r[2]} size={r[4]}",
    )
    ok &= bool(row) and row[3] == _sha(image)
    message = wait(lambda: _message(channel, key))
    ok &= step(
        "RabbitMQ message",
        message,
        lambda m: f"thermo_exchange raw.created: {json.dumps(m)[:110]}...",
    )
    channel.connection.close()
    console.print(table)
    api = f"http://127.0.0.1:{values.function_ports()['camera-api']}"
    status = requests.get(f"{api}/captures/{row[1] if row else '-'}", timeout=5)
    console.print(f"camera-api GET /captures/<image_id>: {status.status_code} {status.text[:160]}")
    return ok


def _bound_queue(env: dict[str, str]) -> Any:
    params = pika.ConnectionParameters(
        host=env["RABBITMQ_HOST"],
        port=int(env["RABBITMQ_PORT"]),
        virtual_host=env["RABBITMQ_VHOST"],
        credentials=pika.PlainCredentials(env["RABBITMQ_USER"], env["RABBITMQ_PASSWORD"]),
    )
    channel = pika.BlockingConnection(params).channel()
    channel.queue_declare("objectflow.demo", exclusive=True)
    channel.queue_bind("objectflow.demo", env["RABBITMQ_EXCHANGE"], routing_key="raw.created")
    return channel


def _message(channel: Any, key: str) -> dict[str, Any] | None:
    while True:
        method, _properties, body = channel.basic_get("objectflow.demo", auto_ack=True)
        if method is None:
            return None
        message = json.loads(body)
        if message.get("objectKey") == key:
            return dict(message)


def _object_key(env: dict[str, str], camera: str) -> str | None:
    listing = clients.s3.client().list_objects_v2(
        Bucket=env["MINIO_RAW_BUCKET"], Prefix=f"{camera}/"
    )
    contents = listing.get("Contents", [])
    return contents[0]["Key"] if contents else None


def _query(env: dict[str, str], statement: str, *args: Any) -> tuple[Any, ...] | None:
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        row = cur.fetchone()
    return tuple(row) if row else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
