"""Indexing throughput: clipsearch's indexer against the naive loop, same model, same files.

    python benchmarks/index_throughput.py --generate 200                 # 12 MP JPEGs it makes
    python benchmarks/index_throughput.py --images ../shared/data/flickr8k_1k/images
    python benchmarks/index_throughput.py --images /tmp/small --model tests/tiny-clip.json \
        --baseline /tmp/prev                  # the pipeline's own cost, against the last release

(a) naive: PIL open, open_clip's preprocess, encode 32 at a time, one process, nothing stored.
(b) clipsearch: the Indexer (worker processes, JPEG draft decoding, hashing, SQLite + FAISS
writes) into a fresh collection, with the model already loaded and warmed up like (a)'s.
(c) with --baseline TREE: `clipsearch index --json` of this tree and of TREE (benchmarks/
baseline.py), --runs times each, alternating, in the environment this script was started with.
Each release's own figure is given (this one's leaves out loading the model, TREE's may not),
and the like-for-like one: files encoded over the seconds the whole command took, from starting
Python to its exit, as a user waits for it. (The runs' own `seconds` are no common measure: one
release imports open_clip before its clock starts, the other inside it.)
Prints one JSON object with the rates, their ratios and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import alternating, ratio, run_json
from indexer.scan import IMAGE_EXTENSIONS
from indexer.source import default_workers
from indexer.sync import Indexer
from search.collection import Collection
from search.sandbox import start_fork_server
from search.spec import ModelSpec

if TYPE_CHECKING:
    from search.model import Encoder

# Both releases' command lines run in the environment a user has, not with the setting below:
# this release's `clipsearch index` makes it itself, b4dcc8d does not (handed it, b4dcc8d indexed
# 1,900-2,250 tiny-model img/s in session 33 instead of the 1,420-2,020 its users get).
USER_ENVIRONMENT = dict(os.environ)
# As `clipsearch index` does: torch's idle threads sleep instead of spinning on the cores the
# decode workers need (the in-process figure was 1,725 img/s spinning, 2,311 sleeping).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch is imported where it is used: each decode worker runs this script's top level again
# (search/sandbox.py), and importing torch there cost every worker 0.9 s and 400 MB of copied
# pages, and halved the in-process figure.


def generate(folder: Path, count: int, width: int = 4000, height: int = 3000) -> list[Path]:
    """Photo-like 12 MP JPEGs: smooth colour fields with detail, about 2-4 MB each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (height, width, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def naive(encoder: Encoder, paths: list[Path], batch_size: int = 32) -> float:
    import torch

    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = [
            encoder.preprocess(Image.open(p).convert("RGB"))
            for p in paths[start : start + batch_size]
        ]
        with torch.inference_mode():  # open_clip's documented recipe, nothing of ours
            encoder.model.encode_image(torch.stack(batch).to(encoder.device, encoder.dtype))
    return len(paths) / (time.perf_counter() - started)


def command_line(tree: Path, folder: Path, model: str, workers: int) -> tuple[float, float]:
    """`clipsearch index --json` into a fresh collection: the release's own images per second,
    and files encoded over the whole command's seconds."""
    with tempfile.TemporaryDirectory() as data:
        started = time.perf_counter()
        summary = run_json(
            tree,
            *("-m", "clipsearch", "index", str(folder), "--data-dir", data, "--json"),
            *("--model", model, "--pretrained", "none", "--workers", str(workers)),
            base=USER_ENVIRONMENT,
        )
        seconds = time.perf_counter() - started
    encoded = summary["added"] + summary["updated"]
    return summary["images_per_second"], round(encoded / seconds, 2)


def against(baseline: Path, folder: Path, model: str, workers: int, runs: int) -> dict[str, Any]:
    """Both releases' command lines, alternating, `runs` times each."""
    this, before = alternating(
        lambda tree: command_line(tree, folder, model, workers), baseline, runs
    )
    own, whole = (list(rates) for rates in zip(*this, strict=True))
    own_before, whole_before = (list(rates) for rates in zip(*before, strict=True))
    return {
        "images_per_second": own,
        "baseline_images_per_second": own_before,
        "ratio": ratio(statistics.median(own), statistics.median(own_before)),
        "command_images_per_second": whole,
        "baseline_command_images_per_second": whole_before,
        "command_ratio": ratio(statistics.median(whole), statistics.median(whole_before)),
    }


def clipsearch(encoder: Encoder, folder: Path, batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as data:
        collection = Collection.create_or_open(Path(data), encoder.spec)
        summary = Indexer(collection, encoder, batch_size, workers, progress=False).run([folder])
    return summary.added / summary.seconds


def peak_rss_mb() -> dict[str, float]:
    to_mb = 1024 if sys.platform != "darwin" else 1024 * 1024
    return {
        "main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / to_mb, 1),
        "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / to_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of images to index")
    source.add_argument("--generate", type=int, metavar="N", help="make N 12 MP JPEGs first")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--baseline", type=Path, help="a worktree of the release to compare with")
    parser.add_argument("--runs", type=int, default=3, help="command-line runs of each release")
    args = parser.parse_args()
    model = str(Path(args.model).resolve()) if args.model.endswith(".json") else args.model

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.images or Path(scratch, "photos")
        if args.generate:
            generate(folder, args.generate)
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        from search.model import Encoder

        start_fork_server()  # as `clipsearch index` does: the workers' server is up before (b)
        encoder = Encoder(ModelSpec.from_args(model, "none"), args.device)
        batch_size = args.batch_size or encoder.batch_size
        naive(encoder, paths[:batch_size])  # warm-up: both timed runs find the model ready
        slow = naive(encoder, paths)
        fast = clipsearch(encoder, folder, batch_size, args.workers)
        result = {
            "images": len(paths),
            "first_image_size": Image.open(paths[0]).size,
            "model": args.model,
            "device": str(encoder.device),
            "workers": args.workers,
            "batch_size": batch_size,
            "naive_images_per_second": round(slow, 2),
            "clipsearch_images_per_second": round(fast, 2),
            "ratio": ratio(fast, slow),
            "peak_rss_mb": peak_rss_mb(),
        }
        if args.baseline:
            runs = (args.baseline, folder, model, args.workers, args.runs)
            result["command_line"] = against(*runs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
