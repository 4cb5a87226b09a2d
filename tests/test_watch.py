"""`clipsearch watch` and `serve --watch` over real folders, with real file-system events: what
happens to the files shows in the API within seconds, a burst of copies is read once each, and
the watcher stops cleanly."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import SAMPLES, TINY_ARGS, draw_photos, run_cli, serving


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {inspect.getsource(check).strip()}")
        time.sleep(0.1)


def served_paths(base: str) -> set[str]:
    return {result["path"] for result in _results(base)}


def test_serve_watch_follows_creations_changes_moves_and_deletions(tmp_path: Path) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    folder.mkdir()
    shutil.copy2(SAMPLES / "red-apple.jpg", folder / "apple.jpg")
    run_cli("index", str(folder), "--data-dir", str(data), *TINY_ARGS, "-q")
    with serving(data, "--watch", str(folder)) as (base, _):
        assert served_paths(base) == {"apple.jpg"}
        for name in ["snowman.png", "rainbow.png"]:
            shutil.copy2(SAMPLES / name, folder / name)
        eventually(lambda: served_paths(base) == {"apple.jpg", "snowman.png", "rainbow.png"})

        (folder / "trips").mkdir()
        (folder / "rainbow.png").rename(folder / "trips" / "rainbow.png")
        (folder / "apple.jpg").unlink()
        eventually(lambda: served_paths(base) == {"snowman.png", "trips/rainbow.png"})

        snowman = next(r for r in _results(base) if r["path"] == "snowman.png")
        shutil.copyfile(SAMPLES / "yellow-flower.jpg", folder / "snowman.png")  # changed
        flower = hashlib.sha256((SAMPLES / "yellow-flower.jpg").read_bytes()).hexdigest()
        eventually(lambda: _image(base, snowman["id"])["sha256"] == flower)  # the same id


def _results(base: str) -> list[dict]:
    found = requests.get(f"{base}/api/search", params={"q": "photo", "k": 1000}, timeout=30)
    return found.json()["results"]


def _image(base: str, image_id: int) -> dict:
    return requests.get(f"{base}/api/images/{image_id}", timeout=30).json()


def test_a_burst_of_500_copies_is_indexed_once_each_and_sigterm_exits_0(tmp_path: Path) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    folder.mkdir()
    originals = draw_photos(tmp_path / "drawn", 500, seed=3)
    command = [sys.executable, "-m", "clipsearch", "watch", str(folder), "--json"]
    command += ["--data-dir", str(data), *TINY_ARGS]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs: list[dict] = []
    reader = threading.Thread(target=lambda: runs.extend(map(json.loads, watcher.stdout)))
    reader.start()
    eventually(lambda: len(runs) >= 1)  # the first run, over the empty folder
    for number, original in enumerate(originals):
        (folder / f"{number // 100}").mkdir(exist_ok=True)
        shutil.copy2(original, folder / f"{number // 100}" / original.name)
    eventually(lambda: sum(run["added"] for run in runs) >= 500, timeout=120)
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=60) == 0, watcher.stderr.read()
    reader.join()

    assert sum(run["added"] for run in runs) == 500
    assert sum(run["updated"] + run["failed"] + run["moved"] for run in runs) == 0  # read once
    again = json.loads(run_cli("index", str(folder), "--data-dir", str(data), "--json").stdout)
    assert (again["added"], again["unchanged"]) == (0, 500)


def test_changes_made_while_nobody_watched_are_found_by_the_first_run(tmp_path: Path) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    draw_photos(folder, 5, seed=4)
    run_cli("index", str(folder), "--data-dir", str(data), *TINY_ARGS, "-q")
    (folder / "photos-000.jpg").unlink()
    for later in draw_photos(folder / "later", 3, seed=5):  # written a minute ago
        os.utime(later, (time.time() - 60, time.time() - 60))
    command = [sys.executable, "-m", "clipsearch", "watch", str(folder), "--json"]
    watcher = subprocess.Popen(
        [*command, "--data-dir", str(data)], stdout=subprocess.PIPE, text=True
    )
    first = json.loads(watcher.stdout.readline())
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=60) == 0
    assert (first["added"], first["removed"], first["unchanged"]) == (3, 1, 4)
