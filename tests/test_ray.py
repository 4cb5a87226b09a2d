"""Indexing on a real local Ray cluster (2 CPUs, the tiny model) gives what this machine's own
pipeline gives; a driver or an encoder actor killed mid-run loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
from sqlalchemy import select

from indexer.ray_source import RaySource
from indexer.scan import FoundFile
from indexer.sync import Indexer
from search.catalog import ImageRecord, StoredVector
from search.collection import Collection
from search.errors import ClipsearchError
from search.model import Encoder
from tests.conftest import SAMPLES, TINY_ARGS, run_cli
from tests.test_crash_safety import PHOTOS, indexed_count, make_photos, wait_for_progress


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local cluster the tests and their `clipsearch index --ray-address` children join."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def rows(collection: Collection) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (sha256, embedding) of every catalog row."""
    with collection.catalog.sessions() as session:
        found = session.execute(
            select(ImageRecord.path, ImageRecord.sha256, StoredVector.data).join(
                StoredVector, StoredVector.id == ImageRecord.id
            )
        )
        return {path: (sha, np.frombuffer(data, np.float32)) for path, sha, data in found}


def failures(collection: Collection) -> dict[str, str]:
    return {f["path"]: f["reason"] for f in collection.stats()["failures"]}


def test_ray_indexes_what_the_local_pipeline_does_and_then_nothing_again(
    cluster: str, tmp_path: Path, encoder: Encoder, photos: Path
) -> None:
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    data = (SAMPLES / "city-skyline-night.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    local = Collection.create_or_open(tmp_path / "local", encoder.spec)
    Indexer(local, encoder, progress=False).run([photos])
    remote = Collection.create_or_open(tmp_path / "ray", encoder.spec)

    summary = Indexer(remote, batch_size=4, progress=False, ray=cluster).run([photos])

    assert (summary.added, summary.failed) == (12, 3)
    ours, theirs = rows(remote), rows(local)
    assert ours.keys() == theirs.keys()
    for path, (sha256, vector) in ours.items():
        assert sha256 == theirs[path][0]
        assert float(vector @ theirs[path][1]) >= 0.9999, path
    assert failures(remote) == failures(local)
    vectors, _ = remote.load_vectors()
    assert len(vectors) == 12

    again = Indexer(remote, progress=False, ray=cluster).run([photos])
    assert (again.added, again.unchanged, again.failed) == (0, 12, 3)


def test_a_driver_killed_mid_run_resumes_with_every_image_once(
    cluster: str, tmp_path: Path
) -> None:
    folder, data = tmp_path / "photos", tmp_path / "data"
    make_photos(folder, PHOTOS)
    command = [sys.executable, "-m", "clipsearch", "index", str(folder), *TINY_ARGS]
    command += ["--data-dir", str(data), "--batch-size", "16", "--ray-address", cluster]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_progress(data, 1, process)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr
    partial = indexed_count(data)
    assert 0 < partial < PHOTOS, "the kill should land mid-run"

    final = run_cli(
        "index", str(folder), "--data-dir", str(data), "--ray-address", cluster, "--json"
    )

    summary = json.loads(final.stdout.splitlines()[-1])
    assert summary["added"] == PHOTOS - partial and summary["unchanged"] == partial
    collection = Collection.open(data)
    paths = rows(collection)
    assert len(paths) == PHOTOS
    vectors, _ = collection.load_vectors()
    with collection.catalog.sessions() as session:
        ids = session.scalars(select(ImageRecord.id)).all()
    assert sorted(vectors.ids()) == sorted(ids)


def test_an_encoder_actor_killed_mid_run_is_replaced_and_the_run_completes(
    cluster: str, tmp_path: Path, encoder: Encoder
) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, PHOTOS)
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, batch_size=16, progress=False, ray=cluster)
    source = indexer.source
    assert isinstance(source, RaySource)
    actor = source.actors[0]
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    with ThreadPoolExecutor(1) as thread:
        run = thread.submit(indexer.run, [folder])
        while indexed_count(tmp_path / "data") == 0 and not run.done():
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        summary = run.result(timeout=300)
    assert summary.added == PHOTOS and summary.failed == 0
    assert ray.get(actor.__ray_call__.remote(lambda _: os.getpid())) != pid


def test_a_folder_a_node_cannot_read_stops_the_run_in_one_line(
    cluster: str, tmp_path: Path, encoder: Encoder
) -> None:
    """The driver found files under a folder the cluster's nodes do not have (no shared mount):
    the run stops, naming the folder, instead of recording every file as failed."""
    unshared = tmp_path / "only-on-the-driver"
    files = [FoundFile(str(unshared), f"{n}.jpg", 1000, 0) for n in range(3)]
    source = RaySource(encoder.spec, cluster)
    with pytest.raises(ClipsearchError) as caught:
        list(source.batches(files, []))
    message = str(caught.value)
    assert f"cannot read {unshared}" in message and "filesystem they share" in message
    assert "\n" not in message


def test_without_ray_installed_the_flag_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, encoder: Encoder, photos: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is absent
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    with pytest.raises(ClipsearchError, match=re.escape("pip install 'clipsearch[ray]'")):
        Indexer(collection, progress=False, ray="").run([photos])
