"""The indexer's writer alone: how many encoded images a second one process commits to a
collection (catalog rows, embeddings, the vector index, a transaction per batch), fed results
that cost nothing to make. Whatever encodes them (this machine's pipeline, a cluster of GPUs)
cannot index faster than this.

    python benchmarks/writer_rate.py --n 100000 --batch-size 32 256 1024 --baseline /tmp/prev

Each batch size writes N new rows into a fresh collection (ViT-B-32's 512-d vectors, no model
loaded) and reports rows a second for the writes and for the whole run with the index saved.
`--baseline TREE` runs the same with the release in that git worktree (one that has this
script: 7e018af or later) and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import ratio, run_json
from indexer.items import Encoded, Result, Seen
from indexer.plan import Sources, make_plan
from indexer.scan import FoundFile
from indexer.writer import Writer
from search.collection import Collection
from search.spec import ModelSpec


def results(root: Path, n: int, dim: int) -> list[Result]:
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        Encoded(
            FoundFile(str(root), f"{i // 1000:05d}/{i}.jpg", 100_000, i),
            f"{i:064x}",
            v,
            640,
            480,
            None,
        )
        for i, v in enumerate(vectors)
    ]


def rate(folder: Path, batch_size: int, todo: list[Result]) -> dict:
    collection = Collection.create_or_open(folder, ModelSpec.from_args("ViT-B-32", "none"))
    root = Path(todo[0].file.root)
    sources = Sources([root], [item.file for item in todo], [])
    with collection.catalog.sessions() as session:
        plan = make_plan(session, sources)
    writer = Writer(collection, plan, sources, _never)
    started = time.perf_counter()
    with writer.saving():
        for start in range(0, len(todo), batch_size):
            writer.write(todo[start : start + batch_size])
        written = time.perf_counter() - started
    whole = time.perf_counter() - started
    assert writer.summary.added == len(todo), writer.summary
    return {
        "batch_size": batch_size,
        "rows_per_second_writing": round(len(todo) / written),
        "rows_per_second_with_index_saved": round(len(todo) / whole),
    }


def _never(seen: Seen) -> Encoded:
    raise AssertionError(f"{seen.file.path}: every result here is new")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--baseline", type=Path, help="the release to compare, a git worktree")
    args = parser.parse_args()
    todo = results(Path("/photos"), args.n, 512)
    rows = []
    for batch_size in args.batch_size:
        with tempfile.TemporaryDirectory() as folder:
            rows.append(rate(Path(folder), batch_size, todo))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result: dict = {"n": args.n, "runs": rows}
    if args.baseline:
        sizes = [str(size) for size in args.batch_size]
        script = ("benchmarks/writer_rate.py", "--n", str(args.n), "--batch-size", *sizes)
        result["baseline"] = run_json(args.baseline, *script)["runs"]
        result["ratios"] = [
            ratio(new["rows_per_second_writing"], old["rows_per_second_writing"])
            for new, old in zip(rows, result["baseline"], strict=True)
        ]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
