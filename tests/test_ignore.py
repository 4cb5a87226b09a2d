"""`--exclude` and `.clipsearchignore` files: gitignore's rules over real folders, a real
catalog, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from indexer.ignore import IGNORE_FILE, MAX_IGNORE_BYTES
from indexer.sync import Indexer
from search.catalog import ImageRecord
from search.collection import Collection
from search.errors import ClipsearchError
from search.model import Encoder
from tests.conftest import SAMPLES, TINY_ARGS, one_line, run_cli


def indexed_paths(collection: Collection) -> set[str]:
    with collection.catalog.sessions() as session:
        return set(session.scalars(select(ImageRecord.path)))


def run(collection: Collection, encoder: Encoder, folder: Path, *excludes: str):
    indexer = Indexer(collection, encoder, workers=0, progress=False, excludes=excludes)
    return indexer.run([folder])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Each sample photo in the root, in trips/, in trips/2024/ and in thumbs/."""
    root = tmp_path / "photos"
    for folder in ["", "trips", "trips/2024", "thumbs"]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in ["red-apple.jpg", "snowman.png", "rainbow.png"]:
            shutil.copy2(SAMPLES / name, root / folder / name)
    return root


def every(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.suffix != ""}


def test_nested_ignore_files_exclude_exactly_what_matches_and_come_back_when_removed(
    tmp_path: Path, encoder: Encoder, tree: Path
) -> None:
    (tree / IGNORE_FILE).write_text("# thumbnails are never wanted\nthumbs/\n*.png\n")
    # Deeper files override: trips/ takes its rainbows back, trips/2024 drops its apple.
    (tree / "trips" / IGNORE_FILE).write_text("!rainbow.png\n")
    (tree / "trips" / "2024" / IGNORE_FILE).write_text("/red-apple.jpg\n")
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)

    run(collection, encoder, tree)
    assert indexed_paths(collection) == {
        "red-apple.jpg",
        "trips/red-apple.jpg",
        "trips/rainbow.png",
        "trips/2024/rainbow.png",
    }

    (tree / "trips" / "2024" / IGNORE_FILE).unlink()
    (tree / IGNORE_FILE).write_text("thumbs/\n")
    summary = run(collection, encoder, tree)
    assert indexed_paths(collection) == {p for p in every(tree) if not p.startswith("thumbs/")}
    assert summary.added == 5 and summary.removed == 0

    (tree / IGNORE_FILE).write_text("trips/2024/\n")  # what becomes ignored leaves the index
    run(collection, encoder, tree)
    assert indexed_paths(collection) == {p for p in every(tree) if not p.startswith("trips/2024/")}


def test_exclude_globs_apply_beside_the_ignore_files_and_stats_shows_both(
    tmp_path: Path, tree: Path
) -> None:
    (tree / "trips" / IGNORE_FILE).write_text("2024/\n")
    data = str(tmp_path / "data")
    run_cli("index", str(tree), "--data-dir", data, *TINY_ARGS, "--exclude", "thumbs/",
            "--exclude", "snowman.png")  # fmt: skip
    stats = json.loads(run_cli("stats", "--data-dir", data, "--json").stdout)
    assert stats["images"] == 4  # apple and rainbow, in the root and in trips/
    assert stats["roots"] == [
        {
            "path": str(tree),
            "exclude": ["thumbs/", "snowman.png"],
            "ignore_files": {f"trips/{IGNORE_FILE}": ["2024/"]},
            "catalog": None,
        }
    ]
    shown = run_cli("stats", "--data-dir", data).stdout
    assert "--exclude thumbs/ snowman.png" in shown and "trips/.clipsearchignore: 2024/" in shown


@pytest.mark.parametrize("kind", ["not utf-8", "a fifo", "a folder", "too large"])
def test_an_ignore_file_that_cannot_be_read_stops_the_run_in_one_line(
    tmp_path: Path, tree: Path, kind: str
) -> None:
    """Indexing on without it would take in what someone asked to keep out; a FIFO by that
    name must not block the run, nor a huge file fill its memory."""
    path = tree / "trips" / IGNORE_FILE
    if kind == "not utf-8":
        path.write_bytes(b"private/\n\xff\xfe\n")
    elif kind == "a fifo":
        os.mkfifo(path)
    elif kind == "a folder":
        path.mkdir()
    else:
        path.write_text("# padding\n" * (MAX_IGNORE_BYTES // 10 + 1))
    result = run_cli("index", str(tree), "--data-dir", str(tmp_path / "data"), *TINY_ARGS,
                     check=False)  # fmt: skip
    assert result.returncode == 1
    assert f"cannot read {path}" in one_line(result.stderr)


def test_a_bad_exclude_pattern_is_refused_before_anything_runs(
    tmp_path: Path, encoder: Encoder
) -> None:
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    with pytest.raises(ClipsearchError, match="--exclude: not a gitignore pattern"):
        Indexer(collection, encoder, excludes=["!"])
