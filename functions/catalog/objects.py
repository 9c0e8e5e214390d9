"""Image objects in MinIO: `products/<product_id>/<image_id>.<jpg|png>` in MINIO_PRODUCT_BUCKET.

Calls go through clients.s3 (the retry budget); links are signed by a second client whose
endpoint is the one clients reach (MINIO_PUBLIC_ENDPOINT), because a SigV4 signature covers the
host. Signing is local: it never calls MinIO.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.catalog import settings as catalog_settings
from functions.runtime import clients, settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "products/"
BATCH = 1000  # keys per DeleteObjects request (the S3 maximum)


def key(product_id: uuid.UUID, image_id: uuid.UUID, extension: str) -> str:
    return f"{PREFIX}{product_id}/{image_id}.{extension}"


def bucket() -> str:
    return catalog_settings.catalog().minio_product_bucket


def put(object_key: str, data: bytes, content_type: str, sha256: str) -> None:
    clients.s3.call(
        lambda s3: s3.put_object(
            Bucket=bucket(),
            Key=object_key,
            Body=data,
            ContentType=content_type,
            Metadata={"sha256": sha256},
        )
    )


def delete(object_key: str) -> None:
    """Delete one object; deleting one that is already gone succeeds (S3 semantics)."""
    clients.s3.call(lambda s3: s3.delete_object(Bucket=bucket(), Key=object_key))


def delete_many(keys: list[str]) -> set[str]:
    """Delete `keys`; returns the keys that were not deleted. A storage outage raises
    DependencyUnavailable (nothing is known to be deleted then)."""
    failed: set[str] = set()
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]

        def delete_batch(s3: S3Client, batch: list[str] = batch) -> Any:
            listing = {"Objects": [{"Key": k} for k in batch], "Quiet": True}
            return s3.delete_objects(Bucket=bucket(), Delete=listing)  # type: ignore[arg-type]

        answer = clients.s3.call(delete_batch)
        failed |= {error["Key"] for error in answer.get("Errors", []) if "Key" in error}
    return failed


def listed(prefix: str = PREFIX) -> Iterator[tuple[str, datetime]]:
    """(key, last modified) of every object under `prefix`, page by page."""
    token: str | None = None
    while True:
        more = {"ContinuationToken": token} if token else {}

        def list_page(s3: S3Client, more: dict[str, str] = more) -> Any:
            return s3.list_objects_v2(Bucket=bucket(), Prefix=prefix, **more)  # type: ignore[arg-type]

        page = clients.s3.call(list_page)
        for item in page.get("Contents", []):
            yield item["Key"], item["LastModified"]
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")


@functools.cache
def signer() -> S3Client:
    """A client for presigning only, on the endpoint clients use."""
    import boto3
    from botocore.config import Config

    cfg = settings.minio()
    return boto3.client(
        "s3",
        endpoint_url=catalog_settings.catalog().minio_public_endpoint or cfg.endpoint,
        aws_access_key_id=cfg.access_key,
        aws_secret_access_key=cfg.secret_key.get_secret_value(),
        region_name=cfg.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def presign(object_key: str, expires_in: int) -> str:
    return signer().generate_presigned_url(
        "get_object", Params={"Bucket": bucket(), "Key": object_key}, ExpiresIn=expires_in
    )
