"""A camera's MQTT message -> the MQTT bridge's CloudEvent -> HTTP -> camera-ingest's checks:
every payload ends as a CameraChunk with the topic's camera id, or as a 4xx."""

from __future__ import annotations

import base64

from hypothesis import event as note
from hypothesis import given
from hypothesis import strategies as st

from devstack import wiring
from functions.camera.events import CameraChunk
from functions.camera.ingest import check_identity
from functions.runtime.errors import ObjectflowError
from functions.sources.mqtt_bridge import match_route, to_cloudevent
from tests.fuzz.wire import Rejected, delivered, json_values, payloads, topic_levels

ROUTES = wiring.load().sources.mqtt_bridge.routes
CHUNK = "objectflow.camera.chunk.received.v1"

cameras = st.sampled_from(["cam-1", "cam.2", "CAM_3", ".hidden", "a" * 129]) | topic_levels


@st.composite
def chunks(draw: st.DrawFn, camera: str) -> dict[str, object]:
    """A chunk of `camera` as cameras send it, each field sometimes replaced by anything."""
    total = draw(st.integers(1, 4))
    chunk: dict[str, object] = {
        "id": camera,
        "index": draw(st.integers(0, total - 1)),
        "total": total,
        "data": base64.b64encode(draw(st.binary(min_size=1, max_size=32))).decode(),
    }
    if draw(st.booleans()):
        chunk["image_id"] = draw(cameras)
    for field in draw(st.lists(st.sampled_from([*chunk, "extra"]), max_size=2, unique=True)):
        chunk[field] = draw(json_values | cameras | st.integers(-2, 6))
    return chunk


@given(data=st.data(), camera=cameras, packet_id=st.integers(1, 65535))
def test_a_camera_message_is_a_chunk_of_its_camera_or_a_4xx(
    data: st.DataObject, camera: str, packet_id: int
) -> None:
    payload = data.draw(payloads(chunks(camera)))
    topic = f"camera/{camera}/image_json"
    route = match_route(ROUTES, topic)
    assert route is not None and route.type == CHUNK
    event = to_cloudevent(route, topic, payload, "mqtt://127.0.0.1:1883", packet_id)
    outcome = delivered(event, [CHUNK])
    if isinstance(outcome, Rejected):
        note(f"adapter {outcome.status}")
        return
    assert isinstance(outcome.data, CameraChunk) and outcome.subject == camera
    try:
        check_identity(outcome.subject, outcome.data)
    except ObjectflowError as exc:
        assert 400 <= exc.status < 500
        note(f"ingest {exc.status}")
        return
    note("a chunk")
    assert outcome.data.id == camera and 0 <= outcome.data.index < outcome.data.total
    assert outcome.data.data  # a chunk carries at least one byte
