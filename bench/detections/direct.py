"""The direct worker: one process polling MongoDB and writing each prediction itself, as
source document 004 designs it (`python -m bench.detections.direct <collection>`).

Same domain code as detections-store (validation, canonical JSON, the upload, the status
update), but no source, broker or claims: a single process needs no claim.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from functions.detections import objects, outbox
from functions.detections import settings as detections_settings
from functions.runtime import clients


def main(collection_name: str) -> None:
    cfg = detections_settings.detections()
    collection = clients.mongodb.database()[collection_name]
    collection.create_index("status")
    s3 = clients.s3.client()
    while True:
        documents = list(collection.find({"status": outbox.PREDICTABLE}).limit(500))
        for document in documents:
            prediction = outbox.prediction(document, cfg.max_prediction_bytes)
            objects.write(s3, prediction)
            outbox.mark_ready(collection, document["_id"], prediction.url, datetime.now(UTC))
        if not documents:
            time.sleep(cfg.poll_interval)


if __name__ == "__main__":
    main(sys.argv[1])
