"""Killing the indexer at any moment loses nothing and duplicates nothing; a running server keeps
answering and follows the new index."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from indexer.sync import Indexer
from search.catalog import ImageRecord
from search.collection import Collection
from search.engine import SearchEngine
from search.model import Encoder
from tests.conftest import TINY_ARGS, ask, run_cli

PHOTOS = 300


def make_photos(folder: Path, count: int) -> None:
    """`count` distinct small pictures in three subfolders."""
    rng = np.random.default_rng(5)
    for i in range(count):
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        ImageDraw.Draw(image).ellipse((x, y, x + 8, y + 8), fill=colour)
        image.save(sub / f"p{i:03d}.png")


def start_index(folder: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipsearch",
            "index",
            str(folder),
            *TINY_ARGS,
            "--data-dir",
            str(data),
            "--batch-size",
            "1",
            "--workers",
            "1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        # Ctrl-C as at a terminal: a shell starts background jobs with SIGINT ignored, and the
        # indexer, as any program, keeps that (CI run from `bash -c '...' &` failed on it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def indexed_count(data: Path) -> int:
    if not (data / "manifest.json").exists():
        return 0
    with Collection.open(data).catalog.sessions() as session:
        return session.scalar(select(func.count(ImageRecord.id))) or 0


def wait_for_progress(data: Path, at_least: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while indexed_count(data) < at_least and process.poll() is None:
        assert time.monotonic() < deadline, "the indexer made no progress"
        time.sleep(0.02)


def test_sigkill_at_random_moments_then_a_full_run(tmp_path: Path, encoder: Encoder) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    make_photos(folder, PHOTOS)
    rng = random.Random(11)
    for attempt in range(3):
        process = start_index(folder, data)
        wait_for_progress(data, attempt * 60 + 1, process)
        # At batch size 1 the indexer commits about 400 images a second here: a kill within
        # 0.15 s of the mark lands mid-run (0.4 s let the third run finish first on a quiet CI).
        time.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL, stderr

    partial = indexed_count(data)
    assert 0 < partial < PHOTOS, "the kills should land mid-run"
    final = run_cli("index", str(folder), "--data-dir", str(data), "--json")
    summary = json.loads(final.stdout.splitlines()[-1])
    assert summary["added"] == PHOTOS - partial and summary["unchanged"] == partial

    collection = Collection.open(data)
    engine = SearchEngine(collection, encoder)
    page = ask(engine, text="a photo", k=PHOTOS)
    paths = [hit.record.path for hit in page.hits]
    assert len(paths) == PHOTOS and len(set(paths)) == PHOTOS
    vectors, _ = collection.load_vectors()
    assert sorted(vectors.ids()) == sorted(h.record.id for h in page.hits)


def test_ctrl_c_stops_cleanly_and_keeps_the_work(tmp_path: Path) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    make_photos(folder, PHOTOS)
    process = start_index(folder, data)
    wait_for_progress(data, 5, process)
    assert process.poll() is None, "the indexer finished before Ctrl-C could interrupt it"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    kept = indexed_count(data)
    assert kept >= 5
    summary = json.loads(run_cli("index", str(folder), "--data-dir", str(data), "--json").stdout)
    assert summary["unchanged"] == kept and summary["added"] == PHOTOS - kept


def test_server_follows_the_indexer(tmp_path: Path, encoder: Encoder, photos: Path) -> None:
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, workers=0, progress=False)
    indexer.run([photos])
    engine = SearchEngine(collection, encoder)
    assert len(ask(engine, text="anything", k=50).hits) == 12

    # Mid-run (lock held, catalog ahead of any saved index): keep answering from the last one.
    with collection.writer(), collection.catalog.transaction() as session:
        collection.catalog.bump_generation(session)
    with collection.writer():
        assert len(ask(engine, text="anything", k=50).hits) == 12

    Image.new("RGB", (40, 40), (10, 200, 10)).save(photos / "green.png")
    indexer.run([photos])
    hits = ask(engine, text="anything", k=50).hits
    assert len(hits) == 13 and "green.png" in {h.record.path for h in hits}
