"""The product image service's domain logic (source document 003; docs/catalog.md).

Plain functions over the clients; the function modules (api.py, products.py, image_delete.py,
retry_deletes.py) only adapt requests and events to them. Outcomes are typed; errors are the
runtime's ObjectflowError kinds, so every adapter maps them the same way.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from functions.catalog import cache, images, metrics, objects, records
from functions.catalog import settings as catalog_settings
from functions.catalog.events import DeletesRetried, ImageDeleted
from functions.runtime import clients, settings
from functions.runtime.errors import DependencyUnavailable, NotFound, ObjectflowError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.catalog")


def _no_product(product_id: uuid.UUID) -> NotFound:
    return NotFound(f"no product {product_id} (unknown or deleted)", field="product_id")


def _forget_links(product_id: uuid.UUID) -> None:
    """Drop the cached links now; if Redis is down the link version already retired them."""
    try:
        clients.redis.call(lambda r: cache.forget_links(r, product_id))
    except ObjectflowError as exc:
        log.warning(
            "cached links not dropped", extra={"product_id": str(product_id), "error": exc.detail}
        )


# --- upload -----------------------------------------------------------------------------------


def check_product(product_id: uuid.UUID) -> None:
    """404 before a body is read for a product that cannot take images."""
    if not clients.postgres.read(lambda cur: records.live_product(cur, product_id)):
        raise _no_product(product_id)


def upload(product_id: uuid.UUID, data: bytes, declared: str | None = None) -> records.ImageRow:
    """Store one image: the row and the object are both written or neither.

    The row is inserted in a transaction that holds the product against deletion, the object is
    uploaded, then the transaction commits. A failed upload rolls the row back. If the commit
    fails after the upload, the object is deleted once the row is known to be absent; when that
    cannot be known (PostgreSQL down), catalog-retry-deletes' sweep removes it later.
    """
    cfg = catalog_settings.catalog()
    try:
        found = images.inspect(data, max_pixels=cfg.image_max_pixels, declared=declared)
    except ObjectflowError:
        metrics.UPLOADS.labels("rejected").inc()
        raise
    image_id = uuid.uuid4()
    row = records.ImageRow(
        image_id,
        product_id,
        objects.bucket(),
        objects.key(product_id, image_id, found.extension),
        found.content_type,
        found.size,
        found.sha256,
        found.width,
        found.height,
        datetime.now(UTC),
    )
    uploaded = False

    def store(cur: Cursor) -> None:
        nonlocal uploaded
        if not records.live_product(cur, product_id, lock=True):
            raise _no_product(product_id)
        records.insert_image(cur, row)
        objects.put(row.key, data, row.content_type, row.sha256)
        uploaded = True
        records.bump_links(cur, product_id)

    try:
        clients.postgres.transaction(store)
    except BaseException as exc:
        metrics.UPLOADS.labels("rejected" if isinstance(exc, NotFound) else "failed").inc()
        if uploaded:
            _undo_upload(row)
        raise
    metrics.UPLOADS.labels("stored").inc()
    _forget_links(product_id)
    return row


def _undo_upload(row: records.ImageRow) -> None:
    try:
        committed = clients.postgres.transaction(lambda cur: records.image(cur, row.image_id))
        if committed is None:
            objects.delete(row.key)
            metrics.DELETES.labels("deleted").inc()
    except ObjectflowError as exc:
        metrics.DELETES.labels("orphan").inc()
        log.warning(
            "upload not undone; catalog-retry-deletes removes the object",
            extra={"key": row.key, "error": exc.detail},
        )


# --- reading ----------------------------------------------------------------------------------


def image(image_id: uuid.UUID) -> records.ImageRow:
    found = clients.postgres.transaction(lambda cur: records.image(cur, image_id))
    if found is None:
        raise NotFound(f"no image {image_id}", field="image_id")
    return found


@dataclass(frozen=True)
class Links:
    product_id: uuid.UUID
    images: list[dict[str, Any]]
    cached: bool


def links(product_id: uuid.UUID) -> Links:
    """Presigned GET links of every image of the product, from the cache while it is current.

    A link is valid IMAGE_LINK_EXPIRY_SECONDS, longer than the cache keeps it, so a cached link
    is never already expired. Redis being down only means uncached answers.
    """
    cfg = catalog_settings.catalog()
    # The cache is read while PostgreSQL answers: a hit waits for one round trip, not two.
    cached = _cache_reader().submit(_redis_or_none, lambda r: r.get(cache.links_key(product_id)))
    version = clients.postgres.read(lambda cur: records.link_version(cur, product_id))
    if version is None:
        raise _no_product(product_id)
    hit = cache.current_links(cached.result(), version)
    if hit is not None:
        metrics.LINKS.labels("hit").inc()
        return Links(product_id, hit, True)
    rows = clients.postgres.transaction(lambda cur: records.images_of(cur, product_id))
    expires = datetime.now(UTC) + timedelta(seconds=cfg.image_link_expiry_seconds)
    listed = [
        {
            "image_id": str(r.image_id),
            "url": objects.presign(r.key, cfg.image_link_expiry_seconds),
            "content_type": r.content_type,
            "size": r.size,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
        }
        for r in rows
    ]
    ttl = cfg.image_links_ttl_seconds
    _redis_or_none(lambda r: cache.cache_links(r, product_id, version, listed, ttl))
    metrics.LINKS.labels("miss").inc()
    return Links(product_id, listed, False)


@functools.cache
def _cache_reader() -> ThreadPoolExecutor:
    """Threads for the cache reads of `links` (at most one per request in flight, and those are
    bounded by the PostgreSQL pool: functions.catalog.api)."""
    return ThreadPoolExecutor(settings.postgres().pool_max, thread_name_prefix="links-cache")


def _redis_or_none(fn: Callable[[Any], Any]) -> Any:
    try:
        return clients.redis.call(fn)
    except ObjectflowError as exc:
        log.warning("link cache unavailable, serving uncached", extra={"error": exc.detail})
        return None


# --- deleting ---------------------------------------------------------------------------------

Handoff = Literal["broker", "failed_deletes", "orphan-sweep"]


def delete_image(
    image_id: uuid.UUID, announce: Callable[[ImageDeleted], None]
) -> tuple[records.ImageRow, Handoff]:
    """Remove the row (and retire the cached links) in one transaction, then hand the object's
    deletion to catalog-image-delete through `announce`; if that fails, straight to
    failed_deletes; if Redis is down too, the sweep finds the object without a row later."""
    row = clients.postgres.transaction(lambda cur: records.delete_image(cur, image_id))
    if row is None:
        raise NotFound(f"no image {image_id}", field="image_id")
    _forget_links(row.product_id)
    event = ImageDeleted(
        image_id=row.image_id, product_id=row.product_id, bucket=row.bucket, key=row.key
    )
    try:
        announce(event)
        return row, "broker"
    except Exception as exc:
        log.warning("image.deleted not taken by the broker", extra={"error": repr(exc)})
    try:
        clients.redis.call(lambda r: cache.add_failed(r, [row.key]))
        metrics.DELETES.labels("failed").inc()
        return row, "failed_deletes"
    except ObjectflowError as exc:
        metrics.DELETES.labels("orphan").inc()
        log.error("object left to the orphan sweep", extra={"key": row.key, "error": exc.detail})
        return row, "orphan-sweep"


def delete_object(key: str) -> bool:
    """catalog-image-delete: True if deleted; on a storage failure the key goes to
    failed_deletes (False). Redis down too: DependencyUnavailable, the broker retries."""
    try:
        objects.delete(key)
    except DependencyUnavailable as exc:
        log.warning(
            "object delete failed, kept in failed_deletes", extra={"key": key, "error": exc.detail}
        )
        clients.redis.call(lambda r: cache.add_failed(r, [key]))
        metrics.DELETES.labels("failed").inc()
        return False
    metrics.DELETES.labels("deleted").inc()
    return True


# --- products (Kafka) ---------------------------------------------------------------------------


def product_created(product_id: uuid.UUID) -> bool:
    """Record the product; idempotent, and a tombstone stays a tombstone."""
    return clients.postgres.transaction(lambda cur: records.record_product(cur, product_id))


@dataclass(frozen=True)
class ProductDeleted:
    rows: int
    objects: int
    failed: int


def product_deleted(product_id: uuid.UUID) -> ProductDeleted:
    """Tombstone the product and remove its rows (after the uploads in flight), then every
    object under its prefix; deletions that fail go to failed_deletes. A replay finds nothing
    more to do."""
    removed = clients.postgres.transaction(lambda cur: records.tombstone(cur, product_id))
    keys = {r.key for r in removed}
    try:
        keys |= {k for k, _ in objects.listed(f"{objects.PREFIX}{product_id}/")}
        failed = objects.delete_many(sorted(keys))
    except DependencyUnavailable as exc:
        log.warning("product objects not deleted", extra={"error": exc.detail})
        failed = keys
    clients.redis.call(lambda r: cache.add_failed(r, sorted(failed)))
    _forget_links(product_id)
    metrics.DELETES.labels("deleted").inc(len(keys) - len(failed))
    metrics.DELETES.labels("failed").inc(len(failed))
    return ProductDeleted(len(removed), len(keys) - len(failed), len(failed))


# --- the daily retry ----------------------------------------------------------------------------


def retry_deletes(now: datetime | None = None) -> DeletesRetried:
    """Retry every key of failed_deletes (deleted ones leave the set), then remove objects under
    products/ that have no row and are older than IMAGE_ORPHAN_AGE_SECONDS."""
    cfg = catalog_settings.catalog()
    keys = clients.redis.call(cache.failed)
    storage_up = True
    try:
        still = objects.delete_many(keys)
    except DependencyUnavailable as exc:
        log.warning("failed_deletes kept: storage unavailable", extra={"error": exc.detail})
        still, storage_up = set(keys), False
    done = [k for k in keys if k not in still]
    clients.redis.call(lambda r: cache.remove_failed(r, done))
    orphans = _sweep(cfg.image_orphan_age_seconds, now) if storage_up else 0
    report = DeletesRetried(
        retried=len(keys), deleted=len(done), still_failing=len(still), orphans_removed=orphans
    )
    for name, count in report.model_dump().items():
        metrics.RETRIED.labels(name).inc(count)
    return report


def _sweep(age_seconds: int, now: datetime | None) -> int:
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=age_seconds)
    old = [key for key, modified in objects.listed() if modified < cutoff]
    removed = 0
    for start in range(0, len(old), objects.BATCH):
        batch = old[start : start + objects.BATCH]
        kept = clients.postgres.transaction(functools.partial(records.keys_with_rows, keys=batch))
        orphans = [k for k in batch if k not in kept]
        removed += len(orphans) - len(objects.delete_many(orphans))
    return removed
