"""Event types of the product image service (docs/catalog.md), and the Kafka record it reads.

Product Service announces products on Kafka `product.created` / `product.deleted`; the records
reach catalog-products as `dev.knative.kafka.event` CloudEvents (functions/sources/events.py).
`product_reference` reads the product id out of such a record.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field

from functions.runtime.errors import InvalidData
from functions.runtime.registry import EventData, EventType, register

PRODUCT_TOPICS = ("product.created", "product.deleted")


class ImageDeleted(EventData):
    """An image row is gone; its object is still to be deleted (by catalog-image-delete)."""

    image_id: uuid.UUID
    product_id: uuid.UUID
    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(pattern=r"^products/[0-9a-f-]{36}/[0-9a-f-]{36}\.(jpg|png)$")


class DeletesRetried(EventData):
    retried: int = Field(ge=0, description="Keys of failed_deletes tried again")
    deleted: int = Field(ge=0, description="Of those, deleted now (they left the set)")
    still_failing: int = Field(ge=0, description="Of those, still in the set")
    orphans_removed: int = Field(ge=0, description="Objects without a row, older than the age")


def _uuid(value: Any, field: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise InvalidData(f"{field}: {value!r} is not a product UUID", field=field)


def product_reference(value: Any, key: str | None) -> uuid.UUID:
    """The product id of a record: `{"productId": ...}`, `{"id": ...}` or a bare JSON string;
    the record key, when present, must name the same product. Anything else is InvalidData."""
    if isinstance(value, dict):
        named = [name for name in ("productId", "id") if name in value]
        if not named:
            raise InvalidData('the record has no "productId" (or "id")', field="data.productId")
        ids = {name: _uuid(value[name], f"data.{name}") for name in named}
        if len(set(ids.values())) > 1:
            raise InvalidData('"productId" and "id" name different products', field="data.id")
        product_id = ids[named[0]]
    elif isinstance(value, str):
        product_id = _uuid(value, "data")
    elif isinstance(value, bytes):
        raise InvalidData("the record value is not JSON", field="data")
    else:
        raise InvalidData(
            'the record value must be {"productId": "<uuid>"} or a UUID string', field="data"
        )
    if key is not None and _uuid(key, "key") != product_id:
        raise InvalidData(f"the record key {key!r} names another product", field="key")
    return product_id


register(
    EventType(
        "objectflow.catalog.image.deleted.v1",
        ImageDeleted,
        "catalog-api removed an image row; catalog-image-delete deletes its object.",
    ),
    EventType(
        "objectflow.catalog.deletes-retried.v1",
        DeletesRetried,
        "catalog-retry-deletes finished a run over failed_deletes and leftover objects.",
    ),
)
