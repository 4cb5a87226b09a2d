"""Re-ranking from a compressed index's float16 vectors when they are not in the page cache:
`HalfVectors.read` (every candidate's page asked for at once) against the plain gather it
replaced (one disk wait per row in turn), in one run on the same file and the same ids.

    python benchmarks/cold_rerank.py --rows 2000000 --candidates 1000 --dir /var/tmp

Writes a file of `rows` random 512-d rows, then for each round drops the file from the page
cache (POSIX_FADV_DONTNEED) and reads `candidates` random rows each way, cold and then again
hot. Prints one JSON line: p50 milliseconds each way, the resident memory each way left mapped
over all rounds, and the cold speed-up.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.halfvectors import HalfVectors

DIM = 512


def written(path: Path, rows: int) -> HalfVectors:
    half = HalfVectors(path, DIM)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100_000):
        ids = np.arange(start, min(rows, start + 100_000))
        half.write(ids, rng.standard_normal((len(ids), DIM), dtype=np.float32))
    half.sync()
    return half


def evicted(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def row_by_row(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The previous release's read: the same random-access mapping, gathered without asking
    for the pages first."""
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    mapping.madvise(mmap.MADV_RANDOM)
    rows = np.frombuffer(mapping, dtype=np.float16).reshape(-1, DIM)
    return lambda ids: rows[ids].astype(np.float32)


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * mmap.PAGESIZE / 2**20


def timed_reads(
    path: Path, read: Callable[[np.ndarray], np.ndarray], ids: np.ndarray
) -> tuple[float, float, float]:
    """Milliseconds to read `ids` cold, then again hot, and the resident MB it left behind."""
    evicted(path)
    before = resident_mb()
    started = time.perf_counter()
    read(ids)
    cold = time.perf_counter()
    read(ids)
    hot = time.perf_counter()
    return (cold - started) * 1000, (hot - cold) * 1000, resident_mb() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        half = written(Path(folder) / "vectors.f16", args.rows)
        reads = {"row by row": row_by_row(half.path), "prefetched": half.read}
        rng = np.random.default_rng(1)
        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in reads}
        for _ in range(args.rounds):
            ids = rng.choice(args.rows, args.candidates, replace=False)
            for name, read in reads.items():
                times[name].append(timed_reads(half.path, read, ids))
        figures = {
            name: {
                "cold_p50_ms": round(float(np.median([t[0] for t in samples])), 2),
                "hot_p50_ms": round(float(np.median([t[1] for t in samples])), 2),
                "resident_mb_added": round(sum(t[2] for t in samples), 1),
            }
            for name, samples in times.items()
        }
        speedup = figures["row by row"]["cold_p50_ms"] / figures["prefetched"]["cold_p50_ms"]
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "candidates": args.candidates,
                    **figures,
                    "cold_speedup": round(speedup, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
