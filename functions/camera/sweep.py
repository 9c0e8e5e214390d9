"""camera-sweep — fired by the `camera-sweep` schedule.

Walks the captures Redis still holds (`camera_captures`, oldest first):
- a complete capture that was never processed (its upload or record failed for longer than the
  delivery retries lasted) is finished now;
- a partial capture idle for longer than `CAMERA_CAPTURE_TTL_S` is deleted, with its session;
- a capture already processed, or whose keys are gone (expired, or reset by an operator), only
  leaves the index.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from functions.camera import capture, metrics
from functions.camera import settings as camera_settings
from functions.camera.events import SweepReport
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.runtime.errors import DependencyUnavailable
from functions.sources.events import Ping

log = logging.getLogger("objectflow.camera.sweep")


def sweep() -> SweepReport:
    cfg = camera_settings.camera()
    store = capture.chunk_store()
    now = time.time()
    # Everything idle past the grace period; partial ones are only dropped past their TTL.
    candidates = clients.call(
        "redis", lambda: list(store.idle_since(now - cfg.sweep_grace_s, cfg.sweep_batch))
    )
    counts = {"completed": 0, "expired": 0, "forgotten": 0, "error": 0}
    for image_id in candidates:
        found = clients.call("redis", partial(store.capture, image_id))
        if found is None or found.processed_key is not None or found.total is None:
            clients.call("redis", partial(store.forget, image_id))
            outcome = "forgotten"
        elif found.complete:
            try:
                done = capture.finish(store, image_id, by="camera-sweep")
            except DependencyUnavailable as exc:
                log.warning(
                    "capture still cannot be finished",
                    extra={"image_id": image_id, "error": exc.detail},
                )
                outcome = "error"
            else:
                if done.outcome != "finished":
                    continue  # another worker holds it, or an operator reset it meanwhile
                outcome = "completed"
        elif (found.last_at or 0) < now - cfg.capture_ttl_s:
            clients.call("redis", partial(store.discard, image_id, found.camera_uid))
            outcome = "expired"
        else:
            continue  # partial and still fresh: its chunks may yet arrive
        counts[outcome] += 1
        metrics.SWEPT.labels(outcome).inc()
    report = SweepReport(
        scanned=len(candidates),
        completed=counts["completed"],
        expired=counts["expired"],
        forgotten=counts["forgotten"],
        errors=counts["error"],
    )
    log.info("sweep run", extra=report.model_dump())
    return report


@cloudevent_function("camera-sweep", accepts=["dev.knative.sources.ping"], idempotent=False)
def camera_sweep(event: Event[Ping]) -> Reply:
    return Reply("objectflow.camera.swept.v1", sweep())
