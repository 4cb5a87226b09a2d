"""What finding duplicates costs: `clipsearch duplicates` over a collection of N CLIP-like
vectors with planted near copies, against comparing every pair exactly.

    python benchmarks/duplicates.py --n 100000
    python benchmarks/duplicates.py --n 1000000 --dir /var/tmp

The collection is written as the product stores it (benchmarks/query_latency.py's fill) and its
index is the one the product chooses for N. A share of the images (`--copies`) are near copies
(cosine about 0.98) of another image. The baseline compares `--sample` images with every image
exactly, streamed from the catalog: its time, scaled to all N images, is what the n² pass would
cost, and its pairs are the truth the index's pairs are measured against. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clip_like import ClipLike, _unit
from benchmarks.query_latency import fill, peak_mb
from search.catalog import Catalog, StoredVector
from search.collection import Collection
from search.duplicates import Pairs, duplicate_groups, find_pairs
from search.request import DUPLICATE_COSINE, MIN_DUPLICATE_COSINE
from search.spec import ModelSpec


class _Unrecorded:
    """fill() shows each chunk to a recorder of exact answers; this benchmark needs none."""

    def see(self, ids: np.ndarray, images: np.ndarray) -> None:
        pass


def with_copies(n: int, share: float, seed: int = 0) -> Iterator[np.ndarray]:
    """ClipLike images, a `share` of which are near copies of another image of their chunk."""
    clip, rng = ClipLike(seed=seed), np.random.default_rng(seed)
    for chunk in clip.image_chunks(n):
        copies = rng.random(len(chunk)) < share
        originals = rng.integers(0, len(chunk), copies.sum())
        noise = _unit(rng.standard_normal((copies.sum(), chunk.shape[1])))
        chunk[copies] = _unit(chunk[originals] + 0.2 * noise)
        yield chunk


def written(folder: Path, n: int, share: float) -> None:
    collection = Collection.create_or_open(folder, ModelSpec.from_args("ViT-B-32", "none"))
    fill(collection, with_copies(n, share), _Unrecorded())  # type: ignore[arg-type]


def exact_neighbours(catalog: Catalog, queries: np.ndarray, threshold: float) -> list[set[int]]:
    """Each query's images at `threshold` or above, every image compared."""
    found: list[set[int]] = [set() for _ in queries]
    with catalog.sessions() as session:
        for ids, chunk in Catalog.vector_chunks(session, 65536):
            rows, columns = np.nonzero(queries @ chunk.T >= threshold)
            for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
                found[row].add(int(ids[column]))
    return found


def measure(folder: Path, args: argparse.Namespace) -> dict:
    spawn = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        child.submit(written, folder, args.n, args.copies).result()
    written_s = time.perf_counter() - started
    collection = Collection.open(folder)
    started = time.perf_counter()
    vectors, _ = collection.load_vectors()
    build_s = time.perf_counter() - started
    before = peak_mb("building the index")

    started = time.perf_counter()
    pairs = find_pairs(collection.catalog, vectors, MIN_DUPLICATE_COSINE)
    pairs_s = time.perf_counter() - started
    groups = duplicate_groups(collection.catalog, pairs, args.threshold)
    groups_s = time.perf_counter() - started - pairs_s
    after = peak_mb("finding duplicates")

    sample = np.random.default_rng(1).choice(args.n, args.sample, replace=False) + 1
    queries = _vectors_of(collection.catalog, sample)
    started = time.perf_counter()
    truth = exact_neighbours(collection.catalog, queries, args.threshold)
    exact_s = time.perf_counter() - started
    return {
        "n": args.n,
        "index": vectors.kind,
        "threshold": args.threshold,
        "groups": len(groups),
        "images_in_groups": sum(len(group) for group in groups),
        "pairs_found_at_floor": len(pairs.score),
        "find_pairs_seconds": round(pairs_s, 1),
        "group_seconds": round(groups_s, 2),
        "rss_mb_before": before,
        "rss_mb_peak": after,
        "pair_recall": _recall(pairs, sample, truth, args.threshold),
        "exact_all_pairs_seconds_estimated": round(exact_s * args.n / args.sample),
        "write_seconds": round(written_s, 1),
        "index_build_seconds": round(build_s, 1),
    }


def _vectors_of(catalog: Catalog, ids: np.ndarray) -> np.ndarray:
    with catalog.sessions() as session:
        rows = session.execute(
            select(StoredVector.id, StoredVector.data).where(StoredVector.id.in_(ids.tolist()))
        ).all()
    by_id = {row.id: np.frombuffer(row.data, np.float32) for row in rows}
    return np.stack([by_id[int(i)] for i in ids])


def _recall(
    pairs: Pairs, sample: np.ndarray, truth: list[set[int]], threshold: float
) -> float | None:
    """Of the sample's exact pairs (other than itself), the share the index found."""
    keep = pairs.score >= threshold
    found: dict[int, set[int]] = {}
    for a, b in zip(pairs.first[keep].tolist(), pairs.second[keep].tolist(), strict=True):
        found.setdefault(a, set()).add(b)
        found.setdefault(b, set()).add(a)
    wanted = [(int(q), exact - {int(q)}) for q, exact in zip(sample, truth, strict=True)]
    total = sum(len(exact) for _, exact in wanted)
    hits = sum(len(exact & found.get(q, set())) for q, exact in wanted)
    return round(hits / total, 4) if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--copies", type=float, default=0.05, help="share of planted copies")
    parser.add_argument("--threshold", type=float, default=DUPLICATE_COSINE)
    parser.add_argument("--sample", type=int, default=2000, help="images compared exactly")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the collection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print(json.dumps(measure(Path(folder), args)))


if __name__ == "__main__":
    main()
