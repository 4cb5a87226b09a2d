"""Changing a collection's model in place (`index --rebuild`): a live server answers throughout
and then with the new model; ids stay; an interrupted rebuild resumes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from search.catalog import ImageRecord
from search.collection import Collection
from tests.conftest import TINY_ARGS, TINY_CONFIG, copy_samples, one_line, run_cli, serving
from tests.test_crash_safety import PHOTOS, make_photos


@pytest.fixture
def other_model(tmp_path: Path) -> list[str]:
    """Another tiny model: 32-d embeddings where the first has 64."""
    config = json.loads(TINY_CONFIG.read_text())
    config["embed_dim"] = 32
    path = tmp_path / "tiny32.json"
    path.write_text(json.dumps(config))
    return ["--model", str(path), "--pretrained", "none"]


def ids_by_path(data: Path) -> dict[str, int]:
    with Collection.open(data).catalog.sessions() as session:
        return {
            path: image_id
            for path, image_id in session.execute(select(ImageRecord.path, ImageRecord.id))
        }


def keep_asking(base: str, stop: threading.Event, answers: list[tuple[int, int, str]]) -> None:
    """A text query, "more like image 1", and the model the server says it uses."""
    while not stop.is_set():
        text = requests.get(f"{base}/api/search", params={"q": "a red apple"}, timeout=60)
        like = requests.get(f"{base}/api/search", params={"image_id": 1}, timeout=60)
        model = requests.get(f"{base}/api/stats", timeout=60).json()["model"]
        answers.append((text.status_code, like.status_code, model))


def test_a_live_server_answers_throughout_and_then_with_the_new_model(
    tmp_path: Path, other_model: list[str]
) -> None:
    photos, data = copy_samples(tmp_path / "photos"), tmp_path / "data"
    run_cli("index", str(photos), "--data-dir", str(data), *TINY_ARGS, "-q")
    before = ids_by_path(data)
    with serving(data) as (base, _):
        stop, answers = threading.Event(), []
        client = threading.Thread(target=keep_asking, args=(base, stop, answers))
        client.start()
        try:
            run_cli("index", str(photos), "--data-dir", str(data), *other_model, "--rebuild")
            deadline = time.monotonic() + 60
            while not answers or answers[-1][2] != "tiny32/none":
                assert time.monotonic() < deadline, answers[-3:]
                time.sleep(0.1)
        finally:
            stop.set()
            client.join()
        assert {text for text, _, _ in answers} == {200}
        # The instant between the switch and the new manifest, an indexed image's vector is
        # the new model's: "ask again" (202), never an error.
        assert {like for _, like, _ in answers} <= {200, 202}
        assert {model for _, _, model in answers} == {"tiny-clip/none", "tiny32/none"}
        search = f"{base}/api/search"
        assert requests.post(search, json={"embedding": [0.1] * 32}, timeout=60).ok
        wrong = requests.post(search, json={"embedding": [0.1] * 64}, timeout=60)
        assert wrong.status_code == 400 and "32 numbers" in wrong.json()["error"]
    assert ids_by_path(data) == before  # links to images survive the change
    assert not (data / "next-model.json").exists()


def test_an_interrupted_rebuild_resumes_and_nothing_else_writes_meanwhile(
    tmp_path: Path, other_model: list[str]
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, PHOTOS)
    run_cli("index", str(photos), "--data-dir", str(data), *TINY_ARGS, "-q")
    command = [sys.executable, "-m", "clipsearch", "index", str(photos), "--data-dir", str(data)]
    command += [*other_model, "--rebuild", "--batch-size", "8"]
    rebuild = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    while _next_vectors(data) == 0 and rebuild.poll() is None:
        time.sleep(0.02)
    rebuild.send_signal(signal.SIGKILL)
    rebuild.wait()
    done = _next_vectors(data)
    assert 0 < done < PHOTOS, "killed too late to show a resume"

    plain = run_cli("index", str(photos), "--data-dir", str(data), check=False)
    assert plain.returncode == 1 and "--rebuild" in one_line(plain.stderr)

    resumed = run_cli("index", str(photos), "--data-dir", str(data), "--rebuild", "--json")
    assert f"embedded {PHOTOS - done} images" in resumed.stderr
    assert json.loads(resumed.stdout)["unchanged"] == PHOTOS
    collection = Collection.open(data)
    assert collection.spec.embed_dim == 32
    vectors, _ = collection.load_vectors()
    assert vectors.dim == 32 and sorted(vectors.ids()) == sorted(ids_by_path(data).values())


def _next_vectors(data: Path) -> int:
    with sqlite3.connect(data / "catalog.sqlite", timeout=30) as connection:
        try:
            return connection.execute("SELECT count(*) FROM next_embeddings").fetchone()[0]
        except sqlite3.OperationalError:  # not made yet
            return 0
