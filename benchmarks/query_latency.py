"""Search latency and recall at collection sizes a laptop cannot index in a test: exact (flat)
against the ANN index clipsearch picks, on synthetic embeddings with CLIP's structure.

    python benchmarks/query_latency.py --n 200000 --json
    python benchmarks/query_latency.py --n 1000000 --baseline /tmp/prev   # benchmarks/baseline.py

Prints one JSON object: {"n", "flat": {...}, "ann": {"index", "recall_at_10", "search_p50_ms",
"search_p99_ms", "build_seconds", "memory_mb"}, "end_to_end_p50_ms", "encode_text_p50_ms",
"search_and_page_p50_ms"} and, on a GPU, "gpu_flat"
too, with the share of queries whose GPU top 10 equals the exact CPU top 10. With --baseline,
the same run of the release before is added as "baseline".

End to end is what a user waits for: ViT-B-32 text encoding (random weights cost what real ones
do) + ANN search + the catalog fetch of one page of 20, through the same SearchEngine the server
uses, over a real on-disk collection of n rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import run_json
from benchmarks.clip_like import ClipLike
from search.catalog import ImageRecord
from search.collection import Collection
from search.spec import ModelSpec
from search.vectors import VectorIndex

CAPTIONS = ["a dog running on grass", "two people at a market", "snow on a mountain", "red car"]


def timings(index: VectorIndex, queries: np.ndarray, k: int = 10) -> tuple[dict, list]:
    found, samples = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query, k)
        samples.append((time.perf_counter() - started) * 1000)
        found.append(ids)
    return {
        "search_p50_ms": round(float(np.percentile(samples, 50)), 3),
        "search_p99_ms": round(float(np.percentile(samples, 99)), 3),
    }, found


def built(ids: np.ndarray, images: np.ndarray, ann: bool) -> tuple[VectorIndex, dict]:
    started = time.perf_counter()
    index = VectorIndex.build(images.shape[1], ids, images, ann=ann)
    seconds = time.perf_counter() - started
    size = faiss.serialize_index(index.index).nbytes
    return index, {"build_seconds": round(seconds, 2), "memory_mb": round(size / 2**20, 1)}


def catalog_rows(collection: Collection, ids: np.ndarray, images: np.ndarray) -> None:
    """n catalog rows as the indexer writes them, embeddings included."""
    now = datetime.now()
    with collection.catalog.transaction() as session:
        root = collection.catalog.root_for(session, "/benchmark")
        for start in range(0, len(ids), 20_000):
            session.execute(
                insert(ImageRecord),
                [
                    {
                        "id": int(image_id),
                        "root_id": root.id,
                        "path": f"{image_id // 1000:04d}/{image_id}.jpg",
                        "size": 100_000,
                        "mtime_ns": 0,
                        "sha256": f"{image_id:064x}",
                        "width": 640,
                        "height": 480,
                        "ext": "jpg",
                        "taken_at": now,
                        "attributes": {},
                        "embedding": images[row].tobytes(),
                    }
                    for row, image_id in enumerate(ids[start : start + 20_000], start)
                ],
            )
        collection.catalog.bump_generation(session)


def end_to_end(ids: np.ndarray, images: np.ndarray, ann: VectorIndex, device: str) -> dict:
    """p50 of a whole text query, and of its two parts: encoding the text, and the search with
    the catalog fetch of its page."""
    from search.engine import SearchEngine
    from search.model import Encoder
    from search.request import SearchRequest

    with tempfile.TemporaryDirectory() as folder:
        spec = ModelSpec.from_args("ViT-B-32", "none")
        collection = Collection.create_or_open(Path(folder), spec)
        catalog_rows(collection, ids, images)
        ann.save(collection.vectors_path(collection.catalog.generation()))
        engine = SearchEngine(collection, Encoder(spec, device))
        whole, encode, search = [], [], []
        for i in range(40):
            text = f"{CAPTIONS[i % 4]} {i}"
            started = time.perf_counter()
            page = engine.query(SearchRequest(text=text, k=20))
            whole.append(time.perf_counter() - started)
            assert page.hits, "the end-to-end query found nothing"
            started = time.perf_counter()
            vector = engine.encoder.encode_texts([f"{text}!"])[0]
            encode.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.search(vector, 20)
            search.append(time.perf_counter() - started)
        parts = {"end_to_end": whole, "encode_text": encode, "search_and_page": search}
        return {f"{name}_p50_ms": p50_ms(times[5:]) for name, times in parts.items()}  # warmed up


def p50_ms(seconds: list[float]) -> float:
    return round(float(np.percentile(seconds, 50)) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="for the end-to-end text encoder")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the model")
    parser.add_argument("--json", action="store_true", help="only the JSON object on stdout")
    parser.add_argument("--baseline", type=Path, help="a worktree of the release to compare with")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    clip = ClipLike()
    images = clip.images(args.n)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    queries = clip.texts_for(images[clip.rng.integers(0, args.n, args.queries)])
    say(f"{args.n} CLIP-like vectors, {args.queries} text queries")

    flat, flat_figures = built(ids, images, ann=False)
    speed, exact = timings(flat, queries)
    flat_figures.update(speed)
    say("flat", flat_figures)

    ann, build_figures = built(ids, images, ann=True)
    speed, found = timings(ann, queries)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)])
    ann_figures = {"index": ann.kind, "recall_at_10": round(float(recall), 4), **speed}
    ann_figures.update(build_figures)
    say("ann", ann_figures)
    del flat

    result: dict = {"n": args.n, "flat": flat_figures, "ann": ann_figures}
    if ann.use_gpu():
        speed, found = timings(ann, queries)
        same = np.mean([np.array_equal(a, e) for a, e in zip(found, exact, strict=True)])
        result["gpu_flat"] = {**speed, "equal_to_exact_cpu_top10": round(float(same), 4)}
        say("gpu flat", result["gpu_flat"])
    if not args.no_end_to_end:
        result.update(end_to_end(ids, images, ann, args.device))
    if args.baseline:
        result["baseline"] = run_json(args.baseline, *baseline_args(args))
    print(json.dumps(result))


def baseline_args(args: argparse.Namespace) -> list[str]:
    """The same run, by the baseline tree's own copy of this script."""
    script = ["benchmarks/query_latency.py", "--json", "--n", str(args.n)]
    script += ["--queries", str(args.queries), "--device", args.device]
    return script + (["--no-end-to-end"] if args.no_end_to_end else [])


if __name__ == "__main__":
    main()
