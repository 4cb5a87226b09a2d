"""Indexing throughput: clipsearch's indexer against the naive loop, same model, same files.

    python benchmarks/index_throughput.py --generate 40                  # 12 MP JPEGs it makes
    python benchmarks/index_throughput.py --images ../shared/data/flickr8k_1k/images

(a) naive: PIL open, open_clip's preprocess, encode 32 at a time, one process, nothing stored.
(b) clipsearch: the Indexer (worker processes, JPEG draft decoding, hashing, SQLite + FAISS
writes) into a fresh collection. Prints one JSON object with both rates, their ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer.scan import IMAGE_EXTENSIONS
from indexer.sync import Indexer, default_workers
from search.collection import Collection
from search.model import Encoder
from search.spec import ModelSpec


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
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = [
            encoder.preprocess(Image.open(p).convert("RGB"))
            for p in paths[start : start + batch_size]
        ]
        with torch.inference_mode():  # open_clip's documented recipe, nothing of ours
            encoder.model.encode_image(torch.stack(batch).to(encoder.device, encoder.dtype))
    return len(paths) / (time.perf_counter() - started)


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.images or Path(scratch, "photos")
        if args.generate:
            generate(folder, args.generate)
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        encoder = Encoder(ModelSpec.from_args(args.model, "none"), args.device)
        batch_size = args.batch_size or (256 if encoder.device.type == "cuda" else 32)
        size = Image.open(paths[0]).size
        fast = clipsearch(encoder, folder, batch_size, args.workers)
        slow = naive(encoder, paths)
    print(
        json.dumps(
            {
                "images": len(paths),
                "first_image_size": size,
                "model": args.model,
                "device": str(encoder.device),
                "workers": args.workers,
                "batch_size": batch_size,
                "naive_images_per_second": round(slow, 2),
                "clipsearch_images_per_second": round(fast, 2),
                "ratio": round(fast / slow, 2),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
