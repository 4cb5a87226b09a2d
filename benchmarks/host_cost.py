"""The CPU time the indexing process spends per image outside its encoder, this tree against
--baseline TREE in the same run:

    git worktree add /tmp/prev f02f3d4
    python benchmarks/host_cost.py --baseline /tmp/prev

On a GPU this is what bounds indexing: the H100 encodes ViT-B-32 at 22,000 img/s alone, and the
indexer reached 3,100-3,260 with its main process busy. It is measured here on a CPU, in
process: generated 224 px JPEGs, a tiny model with 224 px inputs (the pixel traffic of ViT-B-32
without its compute), torch on one thread, and the encoder calls' own thread time taken from
the process's CPU time (decode workers are other processes: not counted). Prints one JSON
object with each run's microseconds per image on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Appended, not put first: a run for the baseline finds that tree's packages on PYTHONPATH first.
# So this script's own helpers (benchmarks/) are imported where only the parent runs: the
# baseline's benchmarks/ may not have them.
sys.path.append(str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    import numpy as np

    from search.model import Encoder

TINY_224 = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def measure(folder: Path, config: Path, batch_size: int, workers: int) -> dict[str, float]:
    """One in-process run of whichever tree is first on the path."""
    import numpy as np
    import torch

    import indexer
    from indexer.sync import Indexer
    from search.collection import Collection
    from search.model import Encoder
    from search.sandbox import start_fork_server
    from search.spec import ModelSpec

    torch.set_num_threads(1)
    start_fork_server()
    encoder = Encoder(ModelSpec.from_args(str(config), "none"), "cpu")
    encoder.encode_pixels(np.zeros((batch_size, 224, 224, 3), np.uint8))  # warm-up
    encoding = _timing_encoder_calls(encoder)
    with tempfile.TemporaryDirectory() as data:
        collection = Collection.create_or_open(Path(data), encoder.spec)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        summary = Indexer(collection, encoder, batch_size, workers, progress=False).run([folder])
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    process = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "host_us_per_image": round((process - encoding[0]) / summary.added * 1e6, 1),
        "encoder_us_per_image": round(encoding[0] / summary.added * 1e6, 1),
        "images_per_second": round(summary.added / seconds, 1),
        "tree": str(Path(indexer.__file__).resolve().parent.parent),
    }


def _timing_encoder_calls(encoder: Encoder) -> list[float]:
    """Adds the calling thread's CPU seconds in each `encode_pixels` call to the list returned."""
    spent = [0.0]
    encode = encoder.encode_pixels

    def timed(pixels: np.ndarray) -> np.ndarray:
        started = time.thread_time()
        try:
            return encode(pixels)
        finally:
            spent[0] += time.thread_time() - started

    encoder.encode_pixels = timed  # type: ignore[method-assign]
    return spent


def compare(baseline: Path, folder: Path, config: Path, runs: int, options: list[str]) -> dict:
    from benchmarks.baseline import alternating, ratio, run_json

    child = (str(Path(__file__).resolve()), "--child", str(folder), str(config), *options)
    this, before = alternating(lambda tree: run_json(tree, *child), baseline.resolve(), runs)
    host = [statistics.median(run["host_us_per_image"] for run in side) for side in (this, before)]
    return {"this": this, "baseline": before, "host_ratio": ratio(*host)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a worktree of the release to compare with")
    parser.add_argument("--images", type=int, default=5000, help="224 px JPEGs to generate")
    parser.add_argument("--batch-size", type=int, default=256, help="as on a GPU")
    parser.add_argument("--workers", type=int, default=1, help="leave the main process a core")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    if args.child:
        print(json.dumps(measure(*args.child, args.batch_size, args.workers)))
        return
    from benchmarks.make_images import draw

    with tempfile.TemporaryDirectory() as scratch:
        folder, config = Path(scratch, "photos"), Path(scratch, "tiny-224.json")
        config.write_text(json.dumps(TINY_224))
        folder.mkdir()
        rng = random.Random(0)
        for number in range(args.images):
            draw(rng, 224, 224).save(folder / f"{number:05d}.jpg", quality=90)
        if args.baseline is None:
            runs = [measure(folder, config, args.batch_size, args.workers)]
            print(json.dumps({"this": runs}))
            return
        result = compare(args.baseline, folder, config, args.runs, options)
    print(json.dumps({"images": args.images, **result}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `clipsearch index` sets it
    main()
