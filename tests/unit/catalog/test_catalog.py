"""The image service's pure parts: record parsing, content checks, streaming body reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from functions.catalog import images, uploads
from functions.catalog.events import product_reference
from functions.catalog.settings import CatalogSettings
from functions.runtime.errors import InvalidData, ObjectflowError
from tests.catalog_support import BAD_FILES, jpeg, png

P = str(uuid.uuid4())


FORMS = [{"productId": P}, {"id": P}, P, {"productId": P, "id": P}, {"productId": P.upper()},
         {"productId": P, "name": "x"}]  # fmt: skip


@pytest.mark.parametrize("value", FORMS)
def test_product_reference_forms(value: Any) -> None:
    assert product_reference(value, None) == uuid.UUID(P)
    assert product_reference(value, P) == uuid.UUID(P)


@pytest.mark.parametrize(
    ("value", "key", "field"),
    [({"productId": "x"}, None, "data.productId"), ({}, None, "data.productId"),
     (None, None, "data"), (["a"], None, "data"), (7, None, "data"), ("nope", None, "data"),
     ({"productId": P, "id": str(uuid.uuid4())}, None, "data.id"),
     ({"productId": P}, str(uuid.uuid4()), "key"), ({"productId": P}, "k", "key")],
)  # fmt: skip
def test_product_reference_refusals(value: Any, key: str | None, field: str) -> None:
    with pytest.raises(InvalidData) as refused:
        product_reference(value, key)
    assert refused.value.field == field


def test_inspect_accepts_jpeg_and_png() -> None:
    found = images.inspect(jpeg(33, 21), max_pixels=10_000)
    assert (found.content_type, found.extension, found.width, found.height) == (
        "image/jpeg", "jpg", 33, 21
    )  # fmt: skip
    assert images.inspect(png(5, 4), max_pixels=100).content_type == "image/png"


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_inspect_refuses(name: str) -> None:
    data, status, kind = BAD_FILES[name]
    with pytest.raises(ObjectflowError) as refused:
        images.inspect(data, max_pixels=10**8)
    assert (refused.value.status, refused.value.code) == (status, kind)


def test_inspect_limits_pixels_and_checks_declared_type() -> None:
    with pytest.raises(images.CorruptImage):
        images.inspect(png(100, 100), max_pixels=9_999)
    with pytest.raises(images.UnsupportedImage):
        images.inspect(jpeg(), max_pixels=10**8, declared="image/png")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def read(content_type: str | None, length: str | None, *parts: bytes, limit: int = 100) -> Any:
    return asyncio.run(uploads.read(content_type, length, _chunks(*parts), limit))


def multipart(name: str, data: bytes) -> tuple[str, bytes]:
    disposition = b'Content-Disposition: form-data; name="' + name.encode() + b'"; filename="x"'
    body = b"--b1\r\n" + disposition + b"\r\n\r\n" + data + b"\r\n--b1--\r\n"
    return "multipart/form-data; boundary=b1", body


def test_reads_raw_and_multipart_bodies() -> None:
    assert read("image/png", None, b"ab", b"cd").data == b"abcd"
    assert read("image/png", None, b"ab").declared == "image/png"
    assert read("application/octet-stream", "2", b"ab").declared is None
    content_type, body = multipart("file", b"x" * 100)
    assert read(content_type, None, body[:7], body[7:]).data == b"x" * 100


def test_limits_are_checked_while_streaming() -> None:
    for length in ("101", None):
        with pytest.raises(images.ImageTooLarge):
            read("image/jpeg", length, b"x" * 60, b"x" * 41)
    content_type, body = multipart("file", b"x" * 101)
    with pytest.raises(images.ImageTooLarge):
        read(content_type, None, body)
    with pytest.raises(images.ImageTooLarge):  # a lie about the length changes nothing
        read("image/jpeg", "5", b"x" * 101)


def test_body_refusals() -> None:
    with pytest.raises(images.UnsupportedImage):
        read("text/plain", None, b"x")
    with pytest.raises(images.UnsupportedImage):
        read(None, None, b"x")
    with pytest.raises(InvalidData):
        read(*multipart("photo", b"x"))
    with pytest.raises(InvalidData):
        read("multipart/form-data", None, b"x")


def test_links_must_outlive_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_LINK_EXPIRY_SECONDS", "3000")
    with pytest.raises(ValueError, match="IMAGE_LINK_EXPIRY_SECONDS"):
        CatalogSettings()
