"""Finding each vector's list while a compressed index is built: comparing every centroid (a
BLAS matrix product) against an HNSW graph over the centroids searched 32 wide, in one run on
the same vectors. `GRAPH_ASSIGNMENT_LISTS` in search/vectors.py is set from these figures.

    python benchmarks/list_assignment.py --vectors 500000 --lists 16384 32768 65536

Prints one JSON line per list count: vectors a second each way, and the graph's build seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import search  # noqa: F401  (first: it chooses OpenBLAS's kernels, search/blas.py)

# isort: split
import faiss
import numpy as np


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, 512), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def per_second(index: faiss.Index, vectors: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(vectors), 50_000):
        index.search(vectors[start : start + 50_000], 1)
    return len(vectors) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=500_000)
    parser.add_argument("--lists", type=int, nargs="+", default=[16_384, 32_768, 65_536])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, args.vectors)
    for lists in args.lists:
        centroids = unit_rows(rng, lists)
        every = faiss.IndexFlatIP(512)
        every.add(centroids)
        graph = faiss.IndexHNSWFlat(512, 32)
        graph.hnsw.efSearch = 32
        started = time.perf_counter()
        graph.add(centroids)
        graph_seconds = time.perf_counter() - started
        figures = {
            "every centroid": per_second(every, vectors),
            "graph": per_second(graph, vectors),
        }
        print(
            json.dumps(
                {
                    "lists": lists,
                    "vectors_per_second": {k: round(v) for k, v in figures.items()},
                    "graph_build_seconds": round(graph_seconds, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
