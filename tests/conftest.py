"""Shared fixtures: a tiny random open_clip model, sample photos, indexed collections and a
real server. Nothing here needs the network, ../shared or a GPU."""

from __future__ import annotations

import contextlib
import csv
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"  # before open_clip/huggingface_hub are imported

import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from benchmarks.make_images import draw
from indexer.sync import Indexer
from search.collection import Collection
from search.engine import Page, SearchEngine
from search.model import Encoder
from search.request import SearchRequest
from search.spec import ModelSpec

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_images"
TINY_CONFIG = Path(__file__).with_name("tiny-clip.json")
TINY_ARGS = ["--model", str(TINY_CONFIG), "--pretrained", "none"]


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    return ModelSpec.from_args(str(TINY_CONFIG), "none")


@pytest.fixture(scope="session")
def encoder(tiny_spec: ModelSpec) -> Encoder:
    return Encoder(tiny_spec, "cpu")


def copy_samples(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image in SAMPLES.iterdir():
        if image.suffix in (".jpg", ".png"):
            shutil.copy2(image, folder / image.name)
    return folder


def draw_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` distinct small pictures: random coloured shapes on a random background."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"{folder.name}-{number:03d}.jpg"
        draw(rng, 96, 72, shapes=4).save(path, quality=90)
        paths.append(path)
    return paths


def write_shop(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A shop's products.csv, and in img/ those of its sample images that exist."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for row in rows:
        source = SAMPLES / Path(row["image"]).name
        if source.exists():
            shutil.copy2(source, folder / row["image"])
    catalog = folder / "products.csv"
    with open(catalog, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return catalog


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return copy_samples(tmp_path / "photos")


def build(data_dir: Path, folder: Path, encoder: Encoder) -> Collection:
    collection = Collection.create_or_open(data_dir, encoder.spec)
    Indexer(collection, encoder, batch_size=5, workers=0, progress=False).run([folder])
    return collection


@pytest.fixture
def collection(tmp_path: Path, photos: Path, encoder: Encoder) -> Collection:
    return build(tmp_path / "data", photos, encoder)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Collection:
    """One read-only collection shared by a module's tests."""
    root = tmp_path_factory.mktemp("indexed")
    return build(root / "data", copy_samples(root / "photos"), encoder)


# The tiny random model packs every picture into a narrow cone: distinct samples reach cosine
# 0.9975 there, its copies 0.99997. Tests through it use a threshold scaled to that, not the
# default, which is for real CLIP models.
TINY_THRESHOLD = "0.999"
COPIES = {"red-apple.jpg", "copies/apple-copy.jpg", "copies/apple-half.jpg", "copies/apple-q40.jpg"}


def with_copies(folder: Path) -> Path:
    """The samples, and of the apple: a byte copy, a half-size resize, a JPEG at quality 40.
    The original is the oldest file, so it leads its byte copy (same pixels)."""
    copy_samples(folder)
    (folder / "copies").mkdir()
    apple = Image.open(SAMPLES / "red-apple.jpg")
    shutil.copyfile(SAMPLES / "red-apple.jpg", folder / "copies" / "apple-copy.jpg")
    apple.resize((apple.width // 2, apple.height // 2)).save(folder / "copies" / "apple-half.jpg")
    apple.save(folder / "copies" / "apple-q40.jpg", quality=40)
    os.utime(folder / "red-apple.jpg", (1_000_000_000, 1_000_000_000))
    return folder


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("copies")
    run_cli(
        "index", str(with_copies(root / "photos")), "--data-dir", str(root / "data"), *TINY_ARGS
    )
    return root / "data"


def ask(engine: SearchEngine, **fields: object) -> Page:
    """A query as every caller makes one: a validated SearchRequest."""
    return engine.query(SearchRequest.parse(fields))


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "clipsearch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"clipsearch {args} failed:\n{result.stderr}")
    return result


PYTHON = shlex.join([sys.executable, "-m", "clipsearch"])


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "RANDOM WEIGHTS" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """A shell script in a mount namespace of its own: mounts there vanish with it."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def read_only_mount(folder: Path) -> str:
    """The shell prelude that makes `folder` read-only inside a mount namespace."""
    return f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} &&"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(
    data_dir: Path, *options: str, inside: str = ""
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`clipsearch serve OPTIONS` on 127.0.0.1, as a user starts it; `inside` is a shell
    prelude it runs after (a mount namespace's mounts), ending in `exec`."""
    port = free_port()
    command = [sys.executable, "-m", "clipsearch", "serve", "--port", str(port), *options]
    command += ["--data-dir", str(data_dir), "--device", "cpu"]
    if inside:
        command = ["unshare", "-rm", "sh", "-c", f"{inside} {shlex.join(command)}"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{process.stdout.read()}")
            time.sleep(0.2)
        yield base, process
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it already
            os.killpg(process.pid, signal.SIGTERM)  # unshare may have forked the server
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(indexed: Collection) -> Iterator[str]:
    with serving(indexed.root) as (base, _process):
        yield base
