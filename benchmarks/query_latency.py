"""Search latency, recall, memory and disk of a real collection of n CLIP-like vectors, with the
index clipsearch picks for n (or the one --index forces), built as the product builds it.

    python benchmarks/query_latency.py --n 1000000 --json
    python benchmarks/query_latency.py --n 10000000 --json --dir /var/tmp
    python benchmarks/query_latency.py --n 1000000 --index ivf --baseline /tmp/prev

The collection is streamed in: catalog rows with their embeddings are written chunk by chunk as
the indexer stores them, while the exact top 10 of every query is kept over the chunks seen, so
nothing ever holds all n vectors. The index is then built by `Collection.load_vectors`, as a
server or the indexer builds it (a compressed one streams the catalog again).

Prints one JSON object: {"n", "index", "build_seconds", "catalog_seconds", "ram_mb_index",
"disk_mb", "rss_mb", "recall_at_10", "search_p50_ms", "search_p99_ms", "filtered_p50_ms":
{"1%", "50%"}, "filtered_recall_at_10", "filter_first_ms", "end_to_end_p50_ms",
"encode_text_p50_ms"}. Recall is against exact search for text-like queries; filtered figures are
for an attribute filter matching 1% and 50% of the rows (after its first query, which reads the
filter from the catalog: filter_first_ms), recall against the exact filtered top 10;
end to end is ViT-B-32 text encoding (random weights cost what real ones do) + search + re-rank
+ the catalog fetch of one page of 20, through the SearchEngine the server uses. rss_mb is the
peak resident memory of the process that builds the index and searches it (the synthetic data
is generated and written by a child process). With --baseline, the same run of the
release before (its own copy of this script) is added as "baseline".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import run_json
from benchmarks.clip_like import ClipLike
from search import vectors
from search.catalog import TagPrompts
from search.collection import Collection
from search.filters import Filters
from search.spec import ModelSpec
from search.vectors import VectorIndex

CAPTIONS = ["a dog running on grass", "two people at a market", "snow on a mountain", "red car"]
FILTERS = {"1%": {"attr_bucket": "7"}, "50%": {"attr_bucket_max": 49}}
FORCED = {  # --index: the thresholds that make the product pick that type
    "flat": (float("inf"), float("inf")),
    "ivf": (0, float("inf")),
    "compressed": (0, 0),
}


class Truth:
    """The exact top 10 of each query over the vectors streamed past it, unfiltered and under
    each of FILTERS (bucket = id % 100, as `fill` writes it)."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.best = {name: self._empty() for name in ("all", *FILTERS)}

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(self.queries), 10)
        return np.full(shape, -np.inf, dtype=np.float32), np.zeros(shape, dtype=np.int64)

    @property
    def ids(self) -> np.ndarray:
        return self.best["all"][1]

    def see(self, ids: np.ndarray, images: np.ndarray) -> None:
        scores = self.queries @ images.T
        bucket = ids % 100
        for name, rows in (("all", slice(None)), ("1%", bucket == 7), ("50%", bucket <= 49)):
            self.best[name] = merged_top10(*self.best[name], ids[rows], scores[:, rows])


def merged_top10(
    top: np.ndarray, top_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best 10 (scores, ids) of its best so far and a new block of `ids` scored."""
    scores = np.concatenate([top, scores], axis=1)
    every = np.concatenate([top_ids, np.broadcast_to(ids, (len(scores), len(ids)))], axis=1)
    best = np.argpartition(-scores, 10, axis=1)[:, :10]
    return np.take_along_axis(scores, best, 1), np.take_along_axis(every, best, 1)


def fill(collection: Collection, chunks: Iterator[np.ndarray], truth: Truth) -> None:
    """Catalog rows and embeddings, as the indexer writes them, one transaction a chunk (raw
    executemany: the ORM's insert would take most of an hour at 10M)."""
    connection = collection.catalog.engine.raw_connection()
    with collection.catalog.transaction() as session:
        root = collection.catalog.root_for(session, "/benchmark").id
    now, first = str(datetime.now()), 1
    for images in chunks:
        ids = np.arange(first, first + len(images), dtype=np.int64)
        first += len(images)
        truth.see(ids, images)
        cursor = connection.cursor()
        cursor.executemany(
            "INSERT INTO images (id, root_id, path, size, mtime_ns, sha256, width, height, ext,"
            " taken_at, attributes, indexed_at) VALUES (?, ?, ?, 100000, 0, ?, 640, 480, 'jpg',"
            " ?, ?, ?)",
            [
                (
                    i,
                    root,
                    f"{i // 1000:05d}/{i}.jpg",
                    f"{i:064x}",
                    now,
                    f'{{"bucket": {i % 100}}}',
                    now,
                )
                for i in ids.tolist()
            ],
        )
        cursor.executemany(
            "INSERT INTO embeddings (id, vector) VALUES (?, ?)",
            zip(ids.tolist(), (row.tobytes() for row in images), strict=True),
        )
        connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the disk a collection at rest takes
    connection.close()
    with collection.catalog.transaction() as session:
        collection.catalog.bump_generation(session)


def timed(call, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return (time.perf_counter() - started) * 1000, result


def percentile(samples: list[float], q: int) -> float:
    return round(float(np.percentile(samples, q)), 2)


def search_figures(index: VectorIndex, truth: Truth) -> dict:
    samples, recalls = [], []
    for query, exact in zip(truth.queries, truth.ids, strict=True):
        ms, (_, ids) = timed(index.search, query, 10)
        samples.append(ms)
        recalls.append(len(set(ids.tolist()) & set(exact.tolist())) / 10)
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "search_p50_ms": percentile(samples, 50),
        "search_p99_ms": percentile(samples, 99),
    }


def filtered_figures(engine, truth: Truth) -> dict:
    first, p50, recall = {}, {}, {}
    for name, values in FILTERS.items():
        filters = Filters.parse(values)
        first[name], page = timed(engine.search, truth.queries[0], 10, filters=filters)
        assert len(page.hits) == 10, f"the {name} filter found {len(page.hits)} of 10"
        samples, recalls = [], []
        for query, exact in zip(truth.queries[1:51], truth.best[name][1][1:51], strict=True):
            ms, page = timed(engine.search, query, 10, filters=filters)
            samples.append(ms)
            recalls.append(len({hit.record.id for hit in page.hits} & set(exact.tolist())) / 10)
        p50[name], recall[name] = percentile(samples, 50), round(float(np.mean(recalls)), 3)
    return {
        "filtered_p50_ms": p50,
        "filtered_recall_at_10": recall,
        "filter_first_ms": {name: round(ms) for name, ms in first.items()},
    }


def end_to_end(engine) -> dict:
    """p50 of a whole text query, and of encoding its text alone."""
    from search.request import SearchRequest

    whole, encode = [], []
    for i in range(40):
        text = f"{CAPTIONS[i % 4]} {i}"
        ms, page = timed(engine.query, SearchRequest(text=text, k=20))
        assert page.hits, "the end-to-end query found nothing"
        whole.append(ms)
        encode.append(timed(engine.encoder.encode_texts, [f"{text}!"])[0])
    return {
        "end_to_end_p50_ms": percentile(whole[5:], 50),
        "encode_text_p50_ms": percentile(encode[5:], 50),
    }


def peak_mb(phase: str) -> int:
    """The process's peak resident memory so far, logged by phase on stderr."""
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"peak RSS after {phase}: {peak} MB", file=sys.stderr)
    return peak


def index_bytes(index: VectorIndex, path: Path) -> int:
    """What the index holds in memory: its file, and the hubs' rows held beside it."""
    return path.stat().st_size + (0 if index.hubs is None else index.hubs.nbytes)


def disk_mb(folder: Path) -> float:
    sizes = {f.name: f.stat().st_size / 2**20 for f in folder.iterdir() if f.is_file()}
    print("disk MB:", {name: round(mb, 1) for name, mb in sizes.items()}, file=sys.stderr)
    return round(sum(sizes.values()), 1)


def written(n: int, queries: int, folder: Path) -> tuple[Truth, float]:
    """The collection written, and each query's exact answers kept, in a child process: the
    generator's gigabyte of cluster centres belongs to the benchmark, not to the product whose
    peak memory is reported. Returns the answers and the milliseconds taken."""
    collection = Collection.create_or_open(folder, ModelSpec.from_args("ViT-B-32", "none"))
    clip = ClipLike()
    chunks = clip.image_chunks(n)
    head = next(chunks)
    truth = Truth(clip.texts_for(head[clip.rng.integers(0, len(head), queries)]))
    with collection.catalog.transaction() as session:  # as tagging stores them
        prompts = clip.prompts_for(head).tobytes()
        model = collection.spec.identity
        session.add(TagPrompts(model=model, vocabulary="-", scale=100, vectors=prompts))
    ms, _ = timed(fill, collection, (c for part in ([head], chunks) for c in part), truth)
    return truth, ms


def measure(args: argparse.Namespace, folder: Path) -> dict:
    from search.engine import SearchEngine
    from search.model import Encoder

    if args.index:
        vectors.ANN_THRESHOLD, vectors.COMPRESS_THRESHOLD = FORCED[args.index]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        truth, catalog_ms = child.submit(written, args.n, args.queries, folder).result()
    collection = Collection.open(folder)
    build_ms, (index, generation) = timed(collection.load_vectors)
    peak_mb("building the index")
    result = {
        "n": args.n,
        "index": index.kind,
        "build_seconds": round(build_ms / 1000, 1),
        "catalog_seconds": round(catalog_ms / 1000, 1),
        "ram_mb_index": round(index_bytes(index, collection.vectors_path(generation)) / 2**20, 1),
        "disk_mb": disk_mb(folder),
    }
    del index
    engine = SearchEngine(collection, Encoder(collection.spec, args.device))
    peak_mb("loading the index and the model")
    result.update(search_figures(engine.vectors, truth))
    peak_mb("searching")
    result.update(filtered_figures(engine, truth))
    peak_mb("filtered searches")
    result.update(end_to_end(engine))
    result["rss_mb"] = peak_mb("end-to-end queries")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument(
        "--queries", type=int, default=1000, help="recall of 200 varied by 0.02 from set to set"
    )
    parser.add_argument("--index", choices=sorted(FORCED), help="default: what the product picks")
    parser.add_argument("--device", default="cpu", help="for the text encoder and GPU search")
    parser.add_argument("--dir", type=Path, help="where the collection is built (and removed)")
    parser.add_argument("--json", action="store_true", help="only the JSON object on stdout")
    parser.add_argument("--baseline", type=Path, help="a worktree of the release to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        result = measure(args, Path(folder))
    if args.baseline:
        script = ["benchmarks/query_latency.py", "--json", "--n", str(args.n)]
        script += ["--queries", str(args.queries)]
        forced = ["--index", args.index] if args.index else []
        place = ["--dir", str(args.dir)] if args.dir else []
        result["baseline"] = run_json(
            args.baseline, *script, *forced, *place, "--device", args.device
        )
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
