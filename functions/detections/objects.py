"""The prediction objects in MinIO: plain code over a boto3 S3 client.

<bucket>/detection/<event_id>.json   canonical JSON, Content-Type application/json,
                                     x-amz-meta-sha256 = sha256 of the body
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import ClientError

from functions.detections.outbox import Prediction

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("objectflow.detections.objects")
Written = Literal["uploaded", "identical", "overwritten"]


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def bucket_exists(s3: S3Client, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _status(exc) == 404:
            return False
        raise
    return True


def object_exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _status(exc) == 404:
            return False
        raise
    return True


def write(s3: S3Client, prediction: Prediction) -> Written:
    """PUT the prediction unless an identical object (same sha256, or same MD5 ETag) is there.

    One request when the key is new (the usual case): the PUT is conditional on no object
    existing (`If-None-Match: *`); only when one does is it read (HEAD), compared and, if it
    differs, overwritten. Idempotent: run again after any failure, it ends with the same object.
    """
    try:
        _put(s3, prediction, if_absent=True)
        return "uploaded"
    except ClientError as exc:
        if _status(exc) != 412:  # 412 Precondition Failed: an object is there
            raise
    head = s3.head_object(Bucket=prediction.bucket, Key=prediction.key)
    etag = head.get("ETag", "").strip('"')
    if head.get("Metadata", {}).get("sha256") == prediction.sha256 or etag == _md5(prediction):
        return "identical"
    log.warning(
        "object differs from the prediction; overwriting",
        extra={"object": prediction.url, "etag": etag, "sha256": prediction.sha256},
    )
    _put(s3, prediction, if_absent=False)
    return "overwritten"


def _put(s3: S3Client, prediction: Prediction, *, if_absent: bool) -> None:
    put = functools.partial(
        s3.put_object,
        Bucket=prediction.bucket,
        Key=prediction.key,
        Body=prediction.body,
        ContentType="application/json",
        Metadata={"sha256": prediction.sha256},
    )
    if if_absent:
        put(IfNoneMatch="*")
    else:
        put()


def _md5(prediction: Prediction) -> str:
    return hashlib.md5(prediction.body, usedforsecurity=False).hexdigest()
