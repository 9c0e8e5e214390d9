"""Reading an upload's body while it streams, never more than the limit.

Two forms, as clients send files: `multipart/form-data` with the file in field `file`, or the
raw file as the body with its own content type (image/jpeg, image/png or
application/octet-stream). The declared Content-Length is checked first; the bytes actually
received are counted as they arrive, so a body that lies about its length or has none is cut
off at the limit (413) without being read further.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from functions.catalog.images import ImageTooLarge, UnsupportedImage
from functions.runtime.errors import InvalidData

RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file


@dataclass(frozen=True)
class Upload:
    data: bytes
    declared: str | None  # a raw body's content type; multipart parts' types are not trusted


def too_large(limit: int) -> ImageTooLarge:
    return ImageTooLarge(f"the file is larger than IMAGE_MAX_BYTES={limit} bytes", field="file")


async def read(
    content_type: str | None, content_length: str | None, body: AsyncIterator[bytes], limit: int
) -> Upload:
    mime, options = parse_options_header(content_type or "")
    mime_type = mime.decode("latin-1").lower()
    if mime_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidData("multipart/form-data without a boundary", field="content-type")
        _check_length(content_length, limit + FORM_OVERHEAD, limit)
        return Upload(await _multipart(boundary, body, limit), None)
    if mime_type not in RAW_TYPES:
        shown = mime_type or "none"
        raise UnsupportedImage(
            f"content type {shown} is not accepted: send multipart/form-data with field "
            f"'file', or the file itself as {', '.join(RAW_TYPES)}",
            field="content-type",
        )
    _check_length(content_length, limit, limit)
    data = bytearray()
    async for chunk in body:
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return Upload(bytes(data), None if mime_type == "application/octet-stream" else mime_type)


def _check_length(declared: str | None, most: int, limit: int) -> None:
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise too_large(limit)


class _FilePart:
    """Callbacks of python-multipart's streaming parser that keep the part named `file`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.found = 0
        self._field, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._in_file = False

    def on_part_begin(self) -> None:
        self._headers, self._in_file = {}, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._in_file = options.get(b"name") == b"file"
        if self._in_file:
            self.found += 1
            if self.found > 1:
                raise InvalidData("send one file per request", field="file")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.data += data[start:end]
            if len(self.data) > self.limit:
                raise too_large(self.limit)


async def _multipart(boundary: bytes, body: AsyncIterator[bytes], limit: int) -> bytes:
    part = _FilePart(limit)
    callbacks = {name: getattr(part, name) for name in dir(part) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidData(f"malformed multipart body: {exc}", field="file") from None
    if not part.found:
        raise InvalidData("multipart/form-data without a field named 'file'", field="file")
    return bytes(part.data)
