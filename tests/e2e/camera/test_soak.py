"""Soak: 10 session-mode captures (no image_id) from each of 6 cameras (20 under `make chaos`)
through the running runtime, with 2% of the chunks lost and 5% sent twice (right after
themselves, as an MQTT resend is).

What must hold: no stored object mixes two captures (each equals one capture byte for byte, or
sits in quarantine as corrupt), and every capture that lost no chunk is stored.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from devstack import wiring
from devstack.camera import sim as camera_sim
from tests.camera_support import objects, sha256
from tests.e2e.camera.conftest import uid
from tests.e2e.camera.test_pipeline import function_metric
from tests.support import s3_client, scaled, wait_for

CAMERAS, CAPTURES, LOST, TWICE = scaled(6, 20), 10, 0.02, 0.05


def quarantined(env: dict[str, str], camera: str) -> list[str]:
    listing = s3_client(env).list_objects_v2(
        Bucket=env["MINIO_RAW_BUCKET"], Prefix=f"quarantine/{camera}/"
    )
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.chaos
def test_soak_lost_and_repeated_chunks_never_mix_captures(
    stack_env: dict[str, str], values: wiring.Values, camera_client: Callable[[], Any]
) -> None:
    rng = random.Random(f"soak-{uuid.uuid4()}")  # a new plan each run; the seed is in the id
    plan: dict[str, list[tuple[bytes, list[dict[str, Any]], bool]]] = {}
    sent = 0
    for _ in range(CAMERAS):
        camera = uid()
        plan[camera] = []
        for _ in range(CAPTURES):
            image = camera_sim.image(rng.randint(1500, 6000), rng.choice(["jpeg", "png"]),
                                     seed=rng.randrange(2**32))  # fmt: skip
            messages: list[dict[str, Any]] = []
            whole = True
            for message in camera_sim.Capture(camera, image, rng.randint(2, 6)).payloads():
                if rng.random() < LOST:
                    whole = False
                    continue
                messages += [message] * (2 if rng.random() < TWICE else 1)
            plan[camera].append((image, messages, whole))
            sent += len(messages)
    handled = re.escape('objectflow_events_total{function="camera-ingest",')
    before = function_metric(values, "camera-ingest", handled)

    def run_camera(camera: str) -> None:
        client = camera_client()
        for _image, messages, _whole in plan[camera]:
            camera_sim.publish(client, camera, messages)

    threads = [threading.Thread(target=run_camera, args=(c,)) for c in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: function_metric(values, "camera-ingest", handled) >= before + sent,
             timeout=90, what=f"camera-ingest handled all {sent} chunks")  # fmt: skip

    lost_none, mixed, missing, in_quarantine = 0, [], [], 0
    for camera, captures in plan.items():
        originals = {sha256(image) for image, _m, _w in captures}
        stored = {sha256(data) for data in objects(stack_env, camera).values()}
        mixed += [camera for digest in stored if digest not in originals]
        in_quarantine += len(quarantined(stack_env, camera))
        for image, _messages, whole in captures:
            lost_none += whole
            if whole and sha256(image) not in stored:
                missing.append(camera)
    assert mixed == [], f"objects that are no capture: {mixed}"
    assert missing == [], f"captures that lost no chunk but were not stored: {missing}"
    assert lost_none > CAMERAS * CAPTURES // 2, lost_none  # the plan lost few chunks
    print(f"soak: {sent} chunks, {lost_none} whole captures stored, {in_quarantine} quarantined")
