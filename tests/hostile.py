"""Files a hostile stranger sends, built here: nothing of the kind is committed."""

from __future__ import annotations

import struct
import zlib


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: decoding it would need gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def nested_bomb_icns(width: int = 200_000, height: int = 200_000) -> bytes:
    """An Apple icon whose header says 1024x1024 and whose one element is a JPEG 2000 image
    claiming width x height pixels (40 gigapixels by default): the shape of Pillow's
    fuzzer-found oom-*.icns files."""
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", height, width, 3, 7, 7, 0, 0))
    siz = struct.pack(">HHIIIIIIIIH", 47, 0, width, height, 0, 0, width, height, 0, 0, 3)
    jp2 = (
        _box(b"jP  ", b"\r\n\x87\n")
        + _box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
        + _box(b"jp2h", ihdr + _box(b"colr", b"\x01\x00\x00\x00\x00\x00\x10"))
        + _box(b"jp2c", b"\xff\x4f\xff\x51" + siz + b"\x07\x01\x01" * 3)
    )
    element = b"ic10" + struct.pack(">I", 8 + len(jp2)) + jp2
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


def memory_hungry_png(side: int = 6000) -> bytes:
    """A valid 16-bit RGBA PNG under the pixel limit (36 MP) that needs about 300 MB to
    decode: legal, but more than a decoder capped below that may take."""
    row = b"\x00" + b"\x00" * (side * 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )
