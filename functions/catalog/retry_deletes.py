"""catalog-retry-deletes — fired by the `catalog-retry-deletes` schedule (daily, 03:00 UTC).

Retries every key in Redis `failed_deletes` (deleted keys leave the set, the others stay), then
removes objects under products/ that have no row and are older than IMAGE_ORPHAN_AGE_SECONDS
(uploads whose commit failed), and replies objectflow.catalog.deletes-retried.v1 with the counts.
"""

from __future__ import annotations

import logging

from functions.catalog import events, service
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.sources.events import Ping

assert events  # its types must be registered before the decorator checks `accepts`
log = logging.getLogger("objectflow.catalog.retry_deletes")


@cloudevent_function("catalog-retry-deletes", accepts=["dev.knative.sources.ping"])
def catalog_retry_deletes(event: Event[Ping]) -> Reply:
    report = service.retry_deletes()
    log.info("deletes retried", extra=report.model_dump())
    return Reply("objectflow.catalog.deletes-retried.v1", report)
