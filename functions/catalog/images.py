"""What an uploaded file is, judged by its content: JPEG or PNG by magic bytes, then decoded.

The name and the declared content type of an upload are never trusted. A file passes when its
first bytes are a JPEG or PNG signature and Pillow decodes it completely: a PNG's chunk CRCs
are verified, and the pixel data of both formats is decoded (a JPEG at 1/8 scale, which still
reads every entropy-coded byte, so truncation is found at a fraction of the cost).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import filetype
from PIL import Image

from functions.runtime.errors import ObjectflowError

FORMATS = {"image/jpeg": ("JPEG", "jpg"), "image/png": ("PNG", "png")}


class EmptyFile(ObjectflowError):
    status = 422
    code = "empty-file"


class UnsupportedImage(ObjectflowError):
    """Not a JPEG or PNG (by content), or declared as something it is not."""

    status = 415
    code = "unsupported-image"


class CorruptImage(ObjectflowError):
    """Starts like a JPEG or PNG but does not decode (truncated, bad CRC, too many pixels)."""

    status = 422
    code = "corrupt-image"


class ImageTooLarge(ObjectflowError):
    status = 413
    code = "image-too-large"


@dataclass(frozen=True)
class Inspected:
    content_type: str
    extension: str
    size: int
    sha256: str
    width: int
    height: int


def inspect(data: bytes, *, max_pixels: int, declared: str | None = None) -> Inspected:
    """Check `data` is a whole JPEG or PNG; `declared` (a raw body's image/* type) must agree."""
    if not data:
        raise EmptyFile("the file is empty", field="file")
    kind = filetype.guess(data[:262])
    mime = kind.mime if kind is not None else None
    if mime not in FORMATS:
        seen = f"{kind.extension.upper()} ({mime})" if kind is not None else "not an image"
        raise UnsupportedImage(f"only JPEG and PNG are accepted; the file is {seen}", field="file")
    if declared and declared.startswith("image/") and declared != mime:
        raise UnsupportedImage(
            f"the body is declared {declared} but its content is {mime}", field="content-type"
        )
    pillow_format, extension = FORMATS[mime]
    width, height = _decode(data, pillow_format, max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    return Inspected(mime, extension, len(data), digest, width, height)


def _decode(data: bytes, pillow_format: str, max_pixels: int) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise CorruptImage(
                        f"{width}x{height} pixels is more than IMAGE_MAX_PIXELS={max_pixels}",
                        field="file",
                    )
                image.verify()  # structure and, for PNG, every chunk's CRC
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                if pillow_format == "JPEG":
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()  # every byte of pixel data; a truncated file raises here
    except CorruptImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise CorruptImage(f"not a decodable {pillow_format}: {detail}", field="file") from None
    return width, height
