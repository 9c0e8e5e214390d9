"""catalog-api — the product image service's HTTP API (docs/catalog.md).

POST   /products/<product_id>/images  multipart field `file`, or the raw file with its type
                                      -> 201 the stored image; 404/413/415/422 store nothing
GET    /products/<product_id>/images  presigned links of every image (cached in Redis)
GET    /images/<image_id>             one image's record
DELETE /images/<image_id>             -> 202: the row is gone, the object follows
                                      (objectflow.catalog.image.deleted.v1 to the broker)
GET /health, GET /metrics, GET /openapi.json: the frame's (functions.runtime.http)
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import anyio.to_thread
import orjson
import requests
from cloudevents.http import CloudEvent
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from functions.catalog import records, service, uploads
from functions.catalog import settings as catalog_settings
from functions.catalog.events import ImageDeleted
from functions.runtime import http_function, settings
from functions.sources import sink

T = TypeVar("T")

SHA256 = r"^[0-9a-f]{64}$"
IMAGE_TYPES = Literal["image/jpeg", "image/png"]
DELETED_ID = uuid.UUID("1d7b4a52-1f0e-4c43-9a0c-3f3b8f6b2e51")  # ids of image.deleted events


class StoredImage(BaseModel):
    image_id: uuid.UUID
    product_id: uuid.UUID
    key: str = Field(description="Object key in MINIO_PRODUCT_BUCKET")
    content_type: IMAGE_TYPES
    size: int = Field(gt=0, description="Bytes")
    sha256: str = Field(pattern=SHA256)
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    @classmethod
    def of(cls, row: records.ImageRow) -> dict[str, Any]:
        return {name: getattr(row, name) for name in cls.model_fields}


class ImageRecord(StoredImage):
    created_at: datetime


class ImageLink(BaseModel):
    image_id: uuid.UUID
    url: str = Field(description="Presigned GET URL")
    content_type: IMAGE_TYPES
    size: int = Field(gt=0)
    expires_at: datetime = Field(description="When the URL stops working (after the cache TTL)")


class ProductLinks(BaseModel):
    product_id: uuid.UUID
    images: list[ImageLink]
    cached: bool = Field(description="Served from the Redis cache")


class ImageDeletion(BaseModel):
    image_id: uuid.UUID
    product_id: uuid.UUID
    key: str
    object_deletion: Literal["broker", "failed_deletes", "orphan-sweep"] = Field(
        description="Who deletes the object: catalog-image-delete (through the broker), "
        "catalog-retry-deletes (from failed_deletes), or its sweep of objects without a row"
    )


_binary = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/jpeg": _binary,
            "image/png": _binary,
            "application/octet-stream": _binary,
        },
    }
}

api = http_function("catalog-api", summary="Product images: upload, links, delete")


@functools.cache
def _workers() -> anyio.CapacityLimiter:
    """At most one request per pooled PostgreSQL connection works at once; the rest queue
    (the pool refuses a connection beyond its size instead of waiting for one)."""
    return anyio.CapacityLimiter(settings.postgres().pool_max)


async def _work(fn: Callable[..., T], *args: Any) -> T:
    """Blocking domain code off the event loop, within the connection pool's size."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=_workers())


@api.post(
    "/products/{product_id}/images",
    status_code=201,
    response_model=StoredImage,
    openapi_extra=UPLOAD_BODY,
)
async def upload_image(product_id: uuid.UUID, request: Request) -> dict[str, Any]:
    """Store a JPEG or PNG of at most IMAGE_MAX_BYTES for the product."""
    await _work(service.check_product, product_id)
    limit = catalog_settings.catalog().image_max_bytes
    body = await uploads.read(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        limit,
    )
    row = await _work(service.upload, product_id, body.data, body.declared)
    return StoredImage.of(row)


@api.get("/products/{product_id}/images", response_model=ProductLinks)
async def product_links(product_id: uuid.UUID) -> Any:
    """Presigned links of all the product's images."""
    found = await _work(service.links, product_id)
    body = {"product_id": found.product_id, "images": found.images, "cached": found.cached}
    if found.cached:  # checked against ProductLinks when it was listed (below): sent as it is
        return Response(orjson.dumps(body), media_type="application/json")
    return body


@api.get("/images/{image_id}", response_model=ImageRecord)
async def image_record(image_id: uuid.UUID) -> dict[str, Any]:
    """One image's record."""
    row = await _work(service.image, image_id)
    return {**StoredImage.of(row), "created_at": row.created_at}


@api.delete("/images/{image_id}", status_code=202, response_model=ImageDeletion)
async def delete_image(image_id: uuid.UUID) -> dict[str, Any]:
    """Remove the image now; its object is deleted asynchronously."""
    row, handoff = await _work(service.delete_image, image_id, _announce)
    return {
        "image_id": row.image_id,
        "product_id": row.product_id,
        "key": row.key,
        "object_deletion": handoff,
    }


@functools.cache
def _session() -> requests.Session:
    return requests.Session()


def _announce(event: ImageDeleted) -> None:
    """Hand objectflow.catalog.image.deleted.v1 to the broker (K_SINK); raises unless taken."""
    attributes = {
        "id": str(uuid.uuid5(DELETED_ID, str(event.image_id))),
        "source": "/objectflow/functions/catalog-api",
        "type": "objectflow.catalog.image.deleted.v1",
        "subject": event.key,
        "datacontenttype": "application/json",
    }
    sink.post(_session(), sink.sink_url(), CloudEvent(attributes, event.model_dump(mode="json")))


catalog_api = api.target
