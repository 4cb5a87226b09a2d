"""Where a compressed index loses recall: in the routing (a query's true neighbours lie in lists it
does not probe) or in the codes (they are probed, but their PQ scores leave them out of the
candidates re-ranked exactly).

    python benchmarks/recall_loss.py --n 3000000 --dir /var/tmp --probes 128 256 512
    python benchmarks/recall_loss.py --n 10000000 --keep /var/tmp/keep10s --probes 640 --spread 0 10

Builds the index the product builds for N CLIP-like vectors (benchmarks/clip_like.py), without a
catalog, and prints per probe count the share of the exact top 10 that sits in the probed lists
and the hub list (`routing`: what no re-ranking can exceed; `codes_scanned`: a query's codes in
those lists) and the share among the top R candidates by code and the hubs' exact top 10
(`candidates`: the recall after exact re-ranking of R), then what the product's search gives
probing that many lists (recall@10 and p50, the disk reads of its re-ranking included); all of
it for each of --spread's routing weights (SPREAD_WEIGHT in search/vectors.py). Holds the
vectors as float16 in memory (1 KB an image: 10 GB at 10M). With --keep DIR the built index, its
vectors file, the queries and their exact top 10 stay in DIR, and a later run with the same N and
DIR searches them instead of generating and building again (50 minutes at 10M): for changes to
how an index is searched, not built.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clip_like import ClipLike
from benchmarks.query_latency import merged_top10
from search import vectors
from search.halfvectors import HalfVectors
from search.vectors import VectorIndex, best_distinct

# isort: split
import faiss  # after search, which chooses OpenBLAS's kernels before FAISS loads them

CHUNK = 50_000


def generated(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images as float16 rows (id = row + 1), 200 text-like queries and the direction the
    texts share, as the product draws it from the tag vocabulary's prompts."""
    clip = ClipLike()
    images = np.empty((n, clip.dim), np.float16)
    start = 0
    for chunk in clip.image_chunks(n):
        images[start : start + len(chunk)] = chunk
        start += len(chunk)
    picked = np.random.default_rng(1).integers(0, min(n, 65_536), 200)
    head = images[: min(n, 65_536)].astype(np.float32)
    return images, clip.texts_for(head[picked]), clip.prompts_for(head).mean(axis=0)


def exact_top10(images: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.full((len(queries), 10), -np.inf, np.float32)
    ids = np.zeros((len(queries), 10), np.int64)
    for start in range(0, len(images), 4 * CHUNK):
        scores = queries @ images[start : start + 4 * CHUNK].astype(np.float32).T
        rows = np.arange(start, start + scores.shape[1]) + 1
        best, ids = merged_top10(best, ids, rows, scores)
    return ids


def built(images: np.ndarray, text: np.ndarray, half: HalfVectors) -> VectorIndex:
    n = len(images)
    count = vectors.compressed_lists(n) * vectors.COMPRESSED_TRAINING_PER_LIST
    sample = images[np.random.default_rng(2).choice(n, min(n, count), replace=False)]
    chunks = (
        (
            np.arange(start, min(n, start + CHUNK)) + 1,
            images[start : start + CHUNK].astype(np.float32),
        )
        for start in range(0, n, CHUNK)
    )
    return VectorIndex.compressed(sample.astype(np.float32), n, chunks, half, text)


def prepared(n: int, folder: Path, keep: bool) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """The index of n images, the queries and their exact top 10: made now, in `folder`, and
    kept there if `keep`; or as an earlier run kept them there."""
    saved, path = folder / f"queries-{n}.npz", folder / f"index-{n}.faiss"
    half = HalfVectors(folder / f"vectors-{n}.f16", ClipLike().dim)
    if keep and saved.exists():
        with np.load(saved) as kept:
            return VectorIndex.load(path, half), kept["queries"], kept["truth"]
    images, queries, text = generated(n)
    truth = exact_top10(images, queries)
    index = built(images, text, half)
    if keep:
        index.save(path)
        np.savez(saved, queries=queries, truth=truth)
    return index, queries, truth


def lists_of_each_id(ivf: faiss.IndexIVF, n: int) -> np.ndarray:
    """Row i: the lists that hold id i, -1 where there is none (a second for a spilled image)."""
    owners = np.full((n + 1, 2), -1, np.int64)
    for number in range(ivf.nlist):
        if size := ivf.invlists.list_size(number):
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
            second = owners[ids, 0] >= 0
            owners[ids, second.astype(np.int64)] = number
    return owners


def losses(
    index: VectorIndex,
    queries: np.ndarray,
    truth: np.ndarray,
    probe_counts: list[int],
    spreads: list[float],
) -> list[dict]:
    owners = lists_of_each_id(index.ivf, len(index))
    sizes = np.array([index.ivf.invlists.list_size(number) for number in range(index.lists)])
    hub_list = np.full((len(queries), 1), index.lists)  # no list if there is no hub list
    hubs = np.empty((len(queries), 0)) if index.hubs is None else index.hubs.top(queries, 10)[1]
    rows = []
    for weight, probes in itertools.product(spreads, probe_counts):
        vectors.SPREAD_WEIGHT = weight  # read by the product's routing at each search
        probed = index.probed(queries, probes)
        lists = np.hstack((probed, hub_list))
        row = {"spread_weight": weight, "probes": probes}
        row["codes_scanned"] = int(sizes[probed].sum(axis=1).mean())
        row["routing"] = _routed(owners[truth], lists)
        for wanted in (1_000, 3_000, 10_000):
            candidates = best_distinct(*index.scan(queries, 2 * wanted, probes), wanted)[1]
            row[f"candidates_{wanted}"] = _share(truth, np.hstack((candidates, hubs)))
        row.update(searched(index, queries, truth, probes))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def searched(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, probes: int) -> dict:
    """What the product's search returns probing this many lists: recall@10 after its exact
    re-ranking, and the p50 of one query's search (the re-ranking's reads included)."""
    index.ivf.nprobe = probes
    found, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(index.search(query, 10)[1])
        seconds.append(time.perf_counter() - started)
    return {"recall_at_10": _share(truth, np.array(found)), "search_p50_ms": _ms(seconds)}


def _ms(seconds: list[float]) -> float:
    return round(float(np.median(seconds)) * 1000, 2)


def _routed(owners: np.ndarray, lists: np.ndarray) -> float:
    """The share of the exact top 10 (each image by the lists it is in) in the lists searched."""
    held = [np.isin(two, found).any(axis=1) for two, found in zip(owners, lists, strict=True)]
    return round(float(np.mean(held)), 3)


def _share(wanted: np.ndarray, found: np.ndarray) -> float:
    return round(
        float(np.mean([np.isin(w, f).mean() for w, f in zip(wanted, found, strict=True)])), 3
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="where the float16 vectors file is written")
    parser.add_argument("--keep", type=Path, help="where the built index is kept for later runs")
    parser.add_argument("--probes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument(
        "--spread", type=float, nargs="+", default=[vectors.SPREAD_WEIGHT], help="SPREAD_WEIGHT"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        index, queries, truth = prepared(args.n, folder, keep=bool(args.keep))
        seconds = round(time.perf_counter() - started)
        rows = losses(index, queries, truth, args.probes, args.spread)
    print(json.dumps({"n": args.n, "index": index.kind, "seconds": seconds, "rows": rows}))


if __name__ == "__main__":
    main()
