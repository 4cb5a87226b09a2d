"""FAISS's matrix products with the OpenBLAS kernels it detects against those search/blas.py
chooses, each in a child process of its own (the library picks its kernels once, on loading).

    python benchmarks/openblas_kernels.py

Prints one JSON line per setting: the kernels OpenBLAS reports, vectors a second assigned to
32,768 lists (a compressed build's step at 10M), and the seconds of one k-means (65,536
vectors, 2,048 centroids, 10 iterations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
if sys.argv[1] == "chosen":
    import search  # chooses the kernels, as the product does before it imports faiss
import faiss, numpy as np
from search.blas import faiss_kernels

rng = np.random.default_rng(0)
def unit(n):
    rows = rng.standard_normal((n, 512), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)
centroids, vectors = faiss.IndexFlatIP(512), unit(50_000)
centroids.add(unit(32_768))
started = time.perf_counter()
centroids.search(vectors, 1)
assigned = len(vectors) / (time.perf_counter() - started)
started = time.perf_counter()
faiss.Kmeans(512, 2048, niter=10, spherical=True, seed=1).train(unit(65_536))
print(json.dumps({"setting": sys.argv[1], "kernels": faiss_kernels(),
    "assigned_per_s": round(assigned), "kmeans_s": round(time.perf_counter() - started, 2)}))
"""


def run(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting], env=env, cwd=root, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    for setting in ("detected", "chosen"):
        print(json.dumps(run(setting)), flush=True)


if __name__ == "__main__":
    main()
