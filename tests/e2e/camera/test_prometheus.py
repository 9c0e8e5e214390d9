"""A camera capture seen through the local Prometheus (devstack/prometheus.py): camera-ingest's
`objectflow_events_total`, scraped from its /metrics, moves by the capture's chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devstack.camera import sim as camera_sim
from tests.camera_support import objects
from tests.e2e.camera.conftest import uid
from tests.support import Prometheus, wait_for

INGESTED = 'sum(objectflow_events_total{job="objectflow-functions", function="camera-ingest"})'


def test_a_capture_shows_in_prometheus(
    camera_client: Callable[[], Any], prometheus: Prometheus, stack_env: dict[str, str]
) -> None:
    before = prometheus.value(INGESTED) or 0.0
    camera, chunks = uid(), 3
    capture = camera_sim.Capture(camera, camera_sim.image(3000, seed=18), chunks)
    camera_sim.publish(camera_client(), camera, capture.payloads())
    wait_for(lambda: objects(stack_env, camera), timeout=30, what="the capture's object")
    wait_for(
        lambda: (prometheus.value(INGESTED) or 0.0) >= before + chunks,
        timeout=30,
        what=f"{INGESTED} to grow by {chunks} in Prometheus",
    )
    # Each sample carries the scrape target's labels: which process of the runtime it came from.
    series = prometheus.query('objectflow_events_total{function="camera-ingest"}')
    assert {s["metric"]["component"] for s in series} == {"camera-ingest"}
