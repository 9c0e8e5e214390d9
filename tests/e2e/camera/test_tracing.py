"""One camera capture is one trace (issue 18): an MQTT capture -> mqtt-bridge -> broker ->
camera-ingest -> S3 put -> the bucket notification -> camera-watch -> RabbitMQ publish, named by
the RabbitMQ message's `traceparent` (tests/tracing_support.py reads the collector)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devstack.camera import sim as camera_sim
from tests.camera_support import BoundQueue
from tests.e2e.camera.conftest import uid
from tests.support import wait_for
from tests.tracing_support import trace_id, wait_for_trace


def test_a_camera_capture_is_one_trace_from_the_bridge_to_rabbitmq(
    stack_env: dict[str, str], camera_client: Callable[[], Any], queue: BoundQueue
) -> None:
    camera = uid()
    capture = camera_sim.Capture(camera, camera_sim.image(600), 1)  # one chunk: one message
    camera_sim.publish(camera_client(), camera, capture.payloads())
    (message,) = wait_for(
        lambda: [m for m in queue.messages() if m["deviceUid"] == camera], what="raw.created"
    )
    trace = trace_id(message["_traceparent"])
    expected = [
        ("mqtt-bridge", "camera/", "consumer"),
        ("broker", "broker ", "producer"),
        ("camera-ingest", "camera-ingest ", "server"),
        ("camera-ingest", "s3", "client"),
        ("minio-webhook", "s3 notification", "consumer"),
        ("camera-watch", "camera-watch ", "server"),
        ("camera-watch", "rabbitmq", "client"),
    ]
    wait_for_trace(trace, expected, "the capture's spans in the collector")
