"""A folder of awkward but valid images and of broken files, indexed through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from indexer.items import Failed
from indexer.pipeline import KnownContent, load_batches
from indexer.scan import FoundFile, Unreadable, scan
from indexer.sync import Indexer
from search.catalog import ImageRecord
from search.collection import Collection
from search.errors import ClipsearchError
from search.model import Encoder
from tests.conftest import TINY_ARGS, run_cli
from tests.hostile import huge_png_header


def make_folder(folder: Path) -> None:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    photo.save(folder / "plain.jpg")
    photo.convert("L").save(folder / "grey.jpg")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    photo.convert("RGBA").save(folder / "rgba.png")
    photo.convert("LA").save(folder / "la.png")
    photo.save(folder / "tiny.bmp")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(folder / "palette-transparent.png", transparency=0)
    Image.fromarray((rng.integers(0, 65535, (64, 64))).astype(np.uint16)).save(folder / "16bit.png")
    frames = [photo.rotate(angle) for angle in (0, 90, 180)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8
    photo.save(folder / "rotated.jpg", exif=exif.tobytes())
    sub = folder / "sub"
    sub.mkdir()
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(sub / "ünïcödé 写真.jpg")
    (sub / "loop").symlink_to(folder, target_is_directory=True)

    data = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.png").write_text("this is not a picture\n")
    (folder / "bomb.png").write_bytes(huge_png_header(30_000, 30_000))


def test_twelve_good_four_failed_exit_zero(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    make_folder(folder)
    data = ["--data-dir", str(tmp_path / "data")]

    result = run_cli("index", str(folder), *TINY_ARGS, *data, "--json", "--workers", "1")

    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["added"], summary["failed"]) == (12, 4)
    assert "Traceback" not in result.stderr
    stats = json.loads(run_cli("stats", "--json", *data).stdout)
    reasons = {failure["path"]: failure["reason"] for failure in stats["failures"]}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "readme.png", "bomb.png"}
    assert "900,000,000 pixels" in reasons["bomb.png"]
    assert "empty" in reasons["empty.jpg"]

    collection = Collection.open(tmp_path / "data")
    with collection.catalog.sessions() as session:
        records = {r.path: r for r in session.scalars(select(ImageRecord))}
    assert "sub/ünïcödé 写真.jpg" in records
    assert (records["rotated.jpg"].width, records["rotated.jpg"].height) == (96, 128)

    again = json.loads(run_cli("index", str(folder), *data, "--json").stdout.splitlines()[-1])
    assert (again["added"], again["unchanged"], again["failed"]) == (0, 12, 4)


def test_special_and_vanishing_files(tmp_path: Path, encoder: Encoder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "good.png")
    os.mkfifo(folder / "pipe.jpg")  # reading it would block forever
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    # Names in Latin-1, as an old Windows archive unpacks them: SQLite's text is UTF-8.
    latin1 = Path(os.fsdecode(bytes(folder) + b"/f\xeate"))
    latin1.mkdir()
    shutil.copy(folder / "good.png", latin1 / "in-it.png")
    shutil.copy(folder / "good.png", os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    found = list(scan(folder))
    reasons = {entry.path: entry.reason for entry in found if isinstance(entry, Unreadable)}
    assert set(reasons) == {"pipe.jpg", "dangling.jpg", "caf\\xe9.png", "f\\xeate/in-it.png"}
    assert reasons["pipe.jpg"] == "not a regular file"
    assert reasons["dangling.jpg"].startswith("cannot stat")
    assert reasons["caf\\xe9.png"].startswith("its name is not UTF-8")

    vanished = FoundFile(str(folder), "gone.jpg", 10, 0)
    files = [f for f in found if isinstance(f, FoundFile)] + [vanished]
    batches = load_batches(files, encoder.layout, KnownContent([]), 4, 0)
    items = [item for batch in batches for item in batch]
    assert isinstance(items[-1], Failed) and "vanished" in items[-1].reason

    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, workers=0, progress=False)
    first, again = indexer.run([folder]), indexer.run([folder])  # ended in UnicodeEncodeError
    assert (first.added, first.failed, again.unchanged, again.failed) == (1, 4, 1, 4)
    with pytest.raises(ClipsearchError, match=r"^/.*/f\\xeate: its name is not UTF-8"):
        indexer.run([latin1])
