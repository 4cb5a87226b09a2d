"""Decoding untrusted files: every mode to correct RGB, EXIF orientation, clear refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from search.errors import ImageError
from search.imaging import InputLayout, decode, decode_for_model, make_thumbnail


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


NOISE = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
FULL_JPEG = encode(Image.fromarray(NOISE), "JPEG")
TRUNCATED_JPEG = FULL_JPEG[: len(FULL_JPEG) // 2]


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")
    picture = decode(data)
    assert picture.image.mode == "RGB" and (picture.width, picture.height) == (40, 30)
    r, g, b = picture.image.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60  # cyan ink off, magenta + yellow on: red


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    picture = decode(encode(image, "PNG", transparency=0))
    assert picture.image.getpixel((5, 5)) == (255, 255, 255)  # transparent: white, not black
    assert picture.image.getpixel((0, 0)) == (255, 0, 0)


def test_la_half_transparent_grey() -> None:
    picture = decode(encode(Image.new("LA", (8, 8), (0, 128)), "PNG"))
    value = picture.image.getpixel((4, 4))
    assert value[0] == value[1] == value[2] and 120 <= value[0] <= 135


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.full((6, 6), 32768, dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert decode(data).image.getpixel((3, 3)) == (128, 128, 128)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    r, _, b = decode(data).image.getpixel((6, 6))
    assert b > 200 and r < 50


def test_heic_from_a_phone_decodes() -> None:
    data = encode(Image.new("RGB", (64, 48), (10, 200, 30)), "HEIF")
    picture = decode(data)
    r, g, b = picture.image.getpixel((32, 24))
    assert (picture.width, picture.height) == (64, 48) and g > 150 and r < 60 and b < 80


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 12:30:00"
    picture = decode(encode(image, "JPEG", exif=exif.tobytes()))
    assert (picture.width, picture.height) == (20, 60)
    assert picture.taken_at is not None and picture.taken_at.year == 2021


def quadrants(width: int = 320, height: int = 240) -> Image.Image:
    """Four flat colours, so that any flip or turn puts a different one in each corner."""
    image = Image.new("RGB", (width, height), (220, 30, 30))
    image.paste((30, 200, 40), (width // 2, 0, width, height // 2))
    image.paste((40, 40, 220), (0, height // 2, width // 2, height))
    image.paste((230, 220, 40), (width // 2, height // 2, width, height))
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_scaled_jpeg_has_pillows_pixels_upright(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(quadrants(), "JPEG", exif=exif.tobytes(), quality=95)
    pillow = Image.open(io.BytesIO(data))
    pillow.draft("RGB", (64, 64))
    expected = ImageOps.exif_transpose(pillow)
    picture = decode(data, min_side=64)
    assert (picture.width, picture.height) == (expected.width * 2, expected.height * 2)
    assert np.array_equal(np.asarray(picture.image), np.asarray(expected))


def test_a_scaled_grey_jpeg_is_grey_rgb() -> None:
    picture = decode(encode(Image.new("L", (400, 400), 77), "JPEG"), min_side=100)
    assert picture.image.mode == "RGB" and picture.image.size == (100, 100)
    assert picture.image.getpixel((50, 50)) == (77, 77, 77)


def test_jpegs_libjpeg_turbo_alone_refuses_are_decoded_or_explained_by_pillow() -> None:
    cmyk = decode(encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG"), min_side=64)
    r, g, b = cmyk.image.getpixel((40, 30))
    assert cmyk.image.size == (100, 75) and r > 200 and g < 60 and b < 60
    with pytest.raises(ImageError, match=r"(?i)truncated"):
        decode(TRUNCATED_JPEG, min_side=16)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is text, not a PNG", "not a readable image"),
        (TRUNCATED_JPEG, "(?i)truncated"),
    ],
)
def test_unusable_bytes_get_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode(data)


def test_pixel_limit_refuses_before_decoding() -> None:
    data = encode(Image.new("L", (400, 300)), "PNG")
    with pytest.raises(ImageError, match="over the limit"):
        decode(data, max_pixels=100_000)
    assert decode(data, max_pixels=120_000).width == 400


def test_a_line_too_thin_to_resize_for_the_model_is_refused_in_one_line() -> None:
    """open_clip resizes the shorter side to the model's and crops the centre: a 1x20000 line
    would become 224x4,480,000 pixels first (3 GB), past the decoders' memory cap."""
    line = encode(Image.new("RGB", (1, 20000), (90, 90, 90)), "PNG")
    with pytest.raises(ImageError, match=r"^1x20000 resizes to 224x4480000 for the model, over"):
        decode_for_model(line, InputLayout(224))
    assert decode_for_model(line, InputLayout(224, squash=True)).pixels.shape == (224, 224, 3)


def test_thumbnail_is_a_small_jpeg() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(encode(Image.new("RGB", (1000, 500)), "PNG"))))
    assert thumb.format == "JPEG" and thumb.size == (256, 128)
