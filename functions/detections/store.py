"""detections-store — one CloudEvent per `predictable` outbox document (mongo-outbox source).

Writes the document's prediction to `<bucket>/detection/<event_id>.json` and marks it `ready`
(functions.detections.writer). A bad document is a 422, which dead-letters the event; the
document stays `predictable` with the reason in `outbox_error`. An outage answers 503.

Not `idempotent` in the adapter's sense: the source posts a document again under the same id
(its event_id) when it is still predictable after the lease, and that delivery must run. The
durable guard is the claim plus the status read under it, so a replay after `ready` changes
nothing.
"""

from __future__ import annotations

import uuid

from functions.detections import metrics, outbox, writer
from functions.detections.events import PREDICTABLE, PredictionPredictable
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.errors import InvalidData


@cloudevent_function("detections-store", accepts=[PREDICTABLE], idempotent=False)
def detections_store(event: Event[PredictionPredictable]) -> None:
    owner = f"detections-store/{uuid.uuid4().hex}"  # one per delivery: threads never share one
    try:
        outcome = writer.write(event.data, owner)
    except outbox.Rejected as exc:
        metrics.STORED.labels("rejected").inc()
        raise InvalidData(exc.reason, field=exc.field) from None
    metrics.STORED.labels(outcome).inc()
