"""The object store (MinIO through boto3): one client, 5xx answers retried like outages, and
objects written carry the writer's trace in their metadata."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from functions.runtime import settings, tracing
from functions.runtime.clients import core

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
TRACE_METADATA = "x-amz-meta-traceparent"


class _S3ServerError(Exception):
    """A 5xx answer from the object store (raised by `call` so tenacity can retry it)."""


def _transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as e

    return (
        e.EndpointConnectionError,
        e.ConnectionClosedError,
        e.ReadTimeoutError,
        e.ConnectTimeoutError,
        _S3ServerError,
    )


def _rejected(exc: BaseException) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    if code == "InvalidAccessKeyId":
        return "MINIO_ACCESS_KEY/MINIO_ROOT_USER"
    if code == "SignatureDoesNotMatch":
        return "MINIO_SECRET_KEY/MINIO_ROOT_PASSWORD"
    return None


@functools.cache
def client() -> S3Client:
    """The process's client (botocore's retries off: use `call` for the budget)."""
    import boto3
    from botocore.config import Config

    cfg = settings.minio()
    made = boto3.client(
        "s3",
        endpoint_url=cfg.endpoint,
        aws_access_key_id=cfg.access_key,
        aws_secret_access_key=cfg.secret_key.get_secret_value(),
        region_name=cfg.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    for operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        made.meta.events.register(f"before-sign.s3.{operation}", _carry_trace)
    return made


def _carry_trace(request: Any, **_: Any) -> None:
    """Store the writer's trace with the object (`x-amz-meta-traceparent`): its bucket
    notification then continues the trace (functions.sources.minio_webhook)."""
    trace = tracing.traceparent(new=False)
    if trace is not None:
        request.headers[TRACE_METADATA] = trace


def call(fn: Callable[[S3Client], T]) -> T:
    """`fn(client)` within the retry budget; 5xx answers count as transient."""
    from botocore.exceptions import ClientError

    def attempt() -> T:
        try:
            return fn(client())
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:
                raise _S3ServerError(core.first_line(exc)) from exc
            raise

    return core.within_budget(BACKEND, attempt)


BACKEND = core.Backend(
    "s3",
    _transient,
    lambda: client().list_buckets(),
    rejected=_rejected,
    caches=(client.cache_clear,),
)
