"""Many servers on one collection: each on a read-only mount of it, each following the new
generations an indexer publishes through a writable path."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from clipsearch.served import SERVER_FILE
from tests.conftest import (
    TINY_ARGS,
    copy_samples,
    draw_photos,
    read_only_mount,
    run_cli,
    serving,
)


def count(base: str) -> int:
    found = requests.get(f"{base}/api/search", params={"q": "a photo", "k": 100}, timeout=30)
    return len(found.json()["results"])


def index(photos: Path, data: Path) -> None:
    """As a user runs it: when it exits, SQLite's WAL is gone and a read-only reader sees a
    catalog nobody writes."""
    run_cli("index", str(photos), "--data-dir", str(data), *TINY_ARGS)


def test_two_read_only_servers_answer_and_follow_a_new_generation(tmp_path: Path) -> None:
    data, photos = tmp_path / "data", copy_samples(tmp_path / "photos")
    index(photos, data)
    assert not data.joinpath("catalog.sqlite-wal").exists()
    mount = read_only_mount(data)
    with serving(data, inside=mount) as (first, _), serving(data, inside=mount) as (second, _):
        assert count(first) == count(second) == 12
        assert not data.joinpath(SERVER_FILE).exists()  # served all the same, unannounced
        draw_photos(photos / "new", 5, seed=11)
        index(photos, data)  # writing where the servers cannot
        deadline = time.monotonic() + 30
        while {count(first), count(second)} != {17} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count(first) == count(second) == 17
