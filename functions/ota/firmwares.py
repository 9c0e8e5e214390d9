"""Firmware images: bytes in MinIO `MINIO_FIRMWARE_BUCKET`, one `ota.firmwares` row each.

An upload is read once, as it streams in: the sha256 and the size are computed on the way and
the size limit stops the upload at the first byte too many, before anything is stored. The
object key holds the digest (`<version>/<sha256>.bin`), so two uploads of one version with
different bytes never overwrite each other's object; the row decides which one is the version.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from python_multipart.multipart import MultipartParser, parse_options_header

from functions.ota.jobs import iso
from functions.runtime.errors import BadRequest, Conflict, PayloadTooLarge

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
COLUMNS = "version, size, sha256, object_key, created_at, signature"


class FirmwareConflict(Conflict):
    """The version exists with other bytes."""

    code = "firmware-conflict"


@dataclass(frozen=True)
class Firmware:
    version: str
    size: int
    sha256: str
    key: str
    created_at: datetime
    signature: str | None  # base64 ed25519 over the bytes (functions/ota/signing.py)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "key": self.key,
            "created_at": iso(self.created_at),
            "signature": self.signature,
        }


@dataclass
class Upload:
    """The received bytes, spooled (memory, then a temporary file), with their digest."""

    file: IO[bytes]
    size: int
    sha256: str
    signature: str | None = None

    def key(self, version: str) -> str:
        return f"{version}/{self.sha256}.bin"


async def receive(chunks: AsyncIterator[bytes], limit: int) -> Upload:
    """Spool `chunks`, hashing as they come; PayloadTooLarge at the first byte over `limit`."""
    digest, size = hashlib.sha256(), 0
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (returned)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"firmware exceeds OTA_FIRMWARE_MAX_BYTES ({limit} bytes)")
            digest.update(chunk)
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return Upload(spool, size, digest.hexdigest())


async def multipart_file(
    body: AsyncIterator[bytes], content_type: str, field: str = "file"
) -> AsyncIterator[bytes]:
    """The bytes of the multipart/form-data part named `field`, as they stream in."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary", field="content-type")
    state: dict[str, Any] = {"header": b"", "value": b"", "headers": {}, "ours": False,
                             "found": False, "out": []}  # fmt: skip

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"] = state["value"] = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["ours"] = disposition.get(b"name") == field.encode() and not state["found"]
        state["found"] |= state["ours"]
        state["headers"] = {}

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["ours"]:
            state["out"].append(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
            out, state["out"] = state["out"], []
            for piece in out:
                yield piece
        parser.finalize()
    except ValueError as exc:  # python-multipart's parse errors
        raise BadRequest(f"malformed multipart body: {exc}", field="file") from None
    if not state["found"]:
        raise BadRequest(f"multipart body has no part named {field!r}", field=field)


def find(cur: Cursor, version: str) -> Firmware | None:
    cur.execute(f"SELECT {COLUMNS} FROM ota.firmwares WHERE version = %s", (version,))
    row = cur.fetchone()
    return Firmware(*row) if row else None


def insert(cur: Cursor, version: str, upload: Upload) -> tuple[Firmware, bool]:
    """The row for `version`: ours (True) if it was new, else the one already there."""
    cur.execute(
        f"""
        INSERT INTO ota.firmwares (version, object_key, size, sha256, signature)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (version) DO NOTHING RETURNING {COLUMNS}
        """,
        (version, upload.key(version), upload.size, upload.sha256, upload.signature),
    )
    row = cur.fetchone()
    if row is not None:
        return Firmware(*row), True
    existing = find(cur, version)
    assert existing is not None
    return existing, False


def add_signature(cur: Cursor, version: str, signature: str) -> Firmware | None:
    """Sign a firmware uploaded unsigned (its bytes uploaded again with a signature, or once a
    key exists); None if it has one already."""
    cur.execute(
        f"UPDATE ota.firmwares SET signature = %s WHERE version = %s AND signature IS NULL "
        f"RETURNING {COLUMNS}",
        (signature, version),
    )
    row = cur.fetchone()
    return Firmware(*row) if row else None


def listing(cur: Cursor) -> list[Firmware]:
    cur.execute(f"SELECT {COLUMNS} FROM ota.firmwares ORDER BY created_at, version")
    return [Firmware(*row) for row in cur.fetchall()]
