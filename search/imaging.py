"""Turning untrusted bytes into an upright RGB picture, or into a clear reason why not.

Both the indexer (files on disk) and the web app (uploads) go through here, so every image the
model sees was decoded, oriented, converted and sized the same way.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pillow_heif
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from search.errors import ImageError

log = logging.getLogger(__name__)

# 12-48 MP photos and panoramas pass; a decompression bomb does not.
DEFAULT_MAX_PIXELS = 150_000_000
# Only the formats photos and product images come in. The other formats Pillow can open (ICNS
# holding JPEG 2000, EPS through Ghostscript, game textures, fuzzer-found containers) add attack
# surface and no photos.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "HEIF", "AVIF")
# Phones save HEIC; libheif (through pillow-heif) teaches Pillow to read it.
pillow_heif.register_heif_opener()
THUMBNAIL_SIZE = 256

_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
# EXIF orientation -> what makes (height, width, 3) pixels upright, as ImageOps.exif_transpose
# turns a picture (the Image.Transpose method named beside each), as numpy views.
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda pixels: pixels[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda pixels: pixels[::-1, ::-1],  # ROTATE_180
    4: lambda pixels: pixels[::-1],  # FLIP_TOP_BOTTOM
    5: lambda pixels: pixels.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda pixels: np.rot90(pixels, -1),  # ROTATE_270
    7: lambda pixels: pixels[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda pixels: np.rot90(pixels),  # ROTATE_90
}
_SWAPS_SIDES = (5, 6, 7, 8)
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass
class Picture:
    pixels: np.ndarray  # (height, width, 3) uint8 RGB, upright; smaller than the file when
    # decoded in draft mode
    width: int  # of the file, upright
    height: int
    taken_at: datetime | None  # EXIF capture time, when the file has one

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)


@dataclass(frozen=True)
class InputLayout:
    """How a model wants its pixels: open_clip's eval preprocessing up to the float conversion,
    which the model side does (uint8 is a quarter of the bytes to hand between processes)."""

    size: int  # square side
    squash: bool = False  # resize to size x size ignoring the aspect ratio (SigLIP), else
    # shortest side to size, then a centre crop
    interpolation: str = "bicubic"

    @property
    def min_side(self) -> int:
        """JPEG draft decoding stops at this shorter side: nothing finer survives the resize."""
        return self.size


def decode(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Picture:
    """Decode the first frame of an image in one of FORMATS, applying EXIF orientation.

    With `min_side`, a JPEG is decoded by libjpeg's DCT scaling straight to the smallest
    1/2, 1/4 or 1/8 size whose shorter side is still at least `min_side`: a 12 MP photo decodes
    about ten times faster, and a model that resizes to a quarter of that loses nothing.
    """
    if not data:
        raise ImageError("empty file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _decode(data, max_pixels, min_side)
        finally:
            # Decoders warn about every oddity of a file; the user wants the picture or one
            # reason, so the warnings go to the debug log.
            for warning in caught:
                log.debug("decoder warning: %s", warning.message)


def _decode(data: bytes, max_pixels: int, min_side: int | None) -> Picture:
    # Pillow refuses images above twice its MAX_IMAGE_PIXELS, checked on every image it opens,
    # also those nested in a container whose own header looks small (ICNS holding JPEG 2000).
    # Half our limit makes it refuse exactly at our limit.
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(_over_limit(exc, max_pixels)) from None
    except Exception as exc:  # Pillow signals unreadable data with many exception types
        raise ImageError(f"not a readable image ({_reason(exc)})") from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageError(
            f"{image.width}x{image.height} is {pixels:,} pixels, over the limit of {max_pixels:,}"
        )
    try:
        taken_at = _capture_time(image)
        orientation = image.getexif().get(_ORIENTATION, 1)
        width, height = image.size
        if orientation in _SWAPS_SIDES:
            width, height = height, width
        pixels = _upright_pixels(image, data, min_side, orientation)
    except Image.DecompressionBombError as exc:
        raise ImageError(_over_limit(exc, max_pixels)) from None
    except MemoryError:
        raise ImageError("cannot decode image (out of memory)") from None
    except Exception as exc:
        raise ImageError(f"cannot decode image ({_reason(exc)})") from None
    return Picture(pixels, width, height, taken_at)


def _upright_pixels(
    image: Image.Image, data: bytes, min_side: int | None, orientation: int
) -> np.ndarray:
    if min_side and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))  # sets Pillow's scale; decodes nothing yet
        if image.mode in ("RGB", "L") and (scaled := _turbo_jpeg(data, image.size)) is not None:
            upright = _UPRIGHT.get(orientation)
            return scaled if upright is None else np.ascontiguousarray(upright(scaled))
    image = ImageOps.exif_transpose(image)
    image.load()
    return np.array(to_rgb(image))  # writable, as torch wants it (model_input)


def _turbo_jpeg(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """A colour or grey JPEG decoded by libjpeg-turbo to `size`, the scale Pillow's draft mode
    chose, with the pixels Pillow would give: simplejpeg calls the same library without
    Pillow's Python-side reading, 87 against 115-240 us for a 320x240 photo at half size.
    None for any file it refuses (strict: also the corrupt ones libjpeg would patch up), which
    Pillow then decodes or explains."""
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_width=size[0], min_height=size[1])
    except Exception:  # whatever the reason, Pillow's path gives it in its words
        return None
    return pixels if pixels.shape[1::-1] == size else None


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
        grey = np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def model_input(
    pixels: np.ndarray, layout: InputLayout, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The (size, size, 3) uint8 pixels open_clip's preprocessing would convert to floats, from
    a picture's upright pixels: the same target size (torchvision's rounding) and centre crop.

    The resize is torch's antialiased uint8 kernel, Pillow's filter with 16-bit weights (ported
    from Pillow-SIMD), not Pillow's own: within 2 levels of Pillow's pixels, and 50 against
    140 us for a 160x120 picture, which was half of what a decode worker spent on a photo."""
    import torch  # the fork server preloads it: decode workers pay nothing for the import

    height, width = pixels.shape[:2]
    target = _resized_size(width, height, layout)
    if target[0] * target[1] > max_pixels:  # a line a pixel thin, resized whole, then cropped
        raise ImageError(
            f"{width}x{height} resizes to {target[0]}x{target[1]} for the model, over the limit "
            f"of {max_pixels:,} pixels"
        )
    image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # channels last: no copy
    if target != (width, height):
        size = (target[1], target[0])
        image = torch.nn.functional.interpolate(
            image, size=size, mode=layout.interpolation, antialias=True
        )
    top = round((target[1] - layout.size) / 2.0)
    left = round((target[0] - layout.size) / 2.0)
    crop = image[0, :, top : top + layout.size, left : left + layout.size]
    return crop.permute(1, 2, 0).numpy().copy()  # (size, size, 3), in memory of its own


def _resized_size(width: int, height: int, layout: InputLayout) -> tuple[int, int]:
    if layout.squash:
        return layout.size, layout.size
    if width <= height:
        return layout.size, int(layout.size * height / width)
    return int(layout.size * width / height), layout.size


@dataclass
class Decoded:
    """A file or upload ready for the model, with what the catalog keeps of it."""

    pixels: np.ndarray  # model_input()
    width: int
    height: int
    taken_at: datetime | None


def decode_for_model(
    data: bytes, layout: InputLayout, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    picture = decode(data, max_pixels, layout.min_side)
    pixels = model_input(picture.pixels, layout, max_pixels)
    return Decoded(pixels, picture.width, picture.height, picture.taken_at)


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
    except Exception:  # EXIF from the wild is malformed in every way; it is optional here
        return None


def _over_limit(bomb: Image.DecompressionBombError, max_pixels: int) -> str:
    """Pillow's refusal, also of an image nested in a container, in our words."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    size = f"{int(found[1]):,} pixels" if found else "an image"
    return f"holds {size}, over the limit of {max_pixels:,}"


def _reason(exc: BaseException) -> str:
    """A sentence from a decoder's exception, without the object reprs some of them carry."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not {', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
    text = _REPR.sub("the data", str(exc).strip().split("\n")[0]).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
