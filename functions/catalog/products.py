"""catalog-products — Product Service's Kafka events (`product.created`, `product.deleted`).

Each record arrives as `dev.knative.kafka.event` from a KafkaSource (consumer group
`image-service`); its topic is the end of the event source (`...#product.created`), its key the
`key` extension. The value names the product: `{"productId": "<uuid>"}`, `{"id": "<uuid>"}` or
a bare JSON string; anything else (a value that is not JSON too) is a 422, dead-lettered.
product.created records the product (idempotent; a tombstone stays); product.deleted removes
its images, objects, cached links and the product (tombstone).
"""

from __future__ import annotations

import logging
from typing import Any

from functions.catalog import events, service
from functions.runtime.adapter import Event, cloudevent_function
from functions.runtime.errors import InvalidData
from functions.sources.events import KafkaRecord

log = logging.getLogger("objectflow.catalog.products")


@cloudevent_function("catalog-products", accepts=["dev.knative.kafka.event"], raw_data=True)
def catalog_products(event: Event[Any]) -> None:  # data: a KafkaRecord, or bytes (not JSON)
    topic = event.source.rpartition("#")[2]
    if topic not in events.PRODUCT_TOPICS:
        raise InvalidData(f"records of topic {topic!r} are not handled here", field="source")
    key: Any = event.extensions.get("key")
    value = event.data.root if isinstance(event.data, KafkaRecord) else event.data
    product_id = events.product_reference(value, key)
    if topic == "product.created":
        new = service.product_created(product_id)
        log.info("product recorded", extra={"product_id": str(product_id), "new": new})
    else:
        done = service.product_deleted(product_id)
        counts = {"rows": done.rows, "objects": done.objects, "failed": done.failed}
        log.info("product deleted", extra={"product_id": str(product_id), **counts})
