"""Turning untrusted bytes into an upright RGB picture, or into a clear reason why not.

Both the indexer (files on disk) and the web app (uploads) go through here, so every image the
model sees was decoded, oriented and converted the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from search.errors import ImageError

# 12-48 MP photos and panoramas pass; a decompression bomb does not. decode() checks the header's
# size against its own, configurable limit before any pixel is decoded, so Pillow's fixed global
# one is lifted.
DEFAULT_MAX_PIXELS = 150_000_000
Image.MAX_IMAGE_PIXELS = None
# Phones save HEIC; libheif (through pillow-heif) teaches Pillow to read it.
pillow_heif.register_heif_opener()
THUMBNAIL_SIZE = 256

_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_EXIF_TRANSPOSES = {5: True, 6: True, 7: True, 8: True}  # orientations that swap width/height
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132


@dataclass
class Picture:
    image: Image.Image  # RGB, upright; smaller than the file when decoded in draft mode
    width: int  # of the file, upright
    height: int
    taken_at: datetime | None  # EXIF capture time, when the file has one


def decode(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Picture:
    """Decode the first frame of any image Pillow reads, applying EXIF orientation.

    With `min_side`, a JPEG is decoded by libjpeg's DCT scaling straight to the smallest
    1/2, 1/4 or 1/8 size whose shorter side is still at least `min_side`: a 12 MP photo decodes
    about ten times faster, and a model that resizes to a quarter of that loses nothing.
    """
    if not data:
        raise ImageError("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow signals unreadable data with many exception types
        raise ImageError(f"not a readable image ({_reason(exc)})") from exc
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageError(
            f"{image.width}x{image.height} is {pixels:,} pixels, over the limit of {max_pixels:,}"
        )
    try:
        taken_at = _capture_time(image)
        width, height = image.size
        if _EXIF_TRANSPOSES.get(image.getexif().get(_ORIENTATION, 1), False):
            width, height = height, width
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image = ImageOps.exif_transpose(image)
        image.load()
        rgb = to_rgb(image)
    except Exception as exc:
        raise ImageError(f"cannot decode image ({_reason(exc)})") from exc
    return Picture(rgb, width, height, taken_at)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB the way a viewer shows it: transparency over white, high bit
    depths scaled rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 1.0 if values.max(initial=0) <= 255 else 255.0 / 65535.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            scale = 255.0
        grey = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> bytes:
    picture = decode(data, min_side=size)
    image = picture.image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def _capture_time(image: Image.Image) -> datetime | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except (ValueError, TypeError, OSError, SyntaxError):
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
