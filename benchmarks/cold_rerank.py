"""Re-ranking from a compressed index's float16 vectors, in and out of the page cache:
`HalfVectors.read` (rows the cache holds read at once, every other asked of the kernel, then read
with pread) against the release before's read (every row asked for first), an earlier release's
(a mapping whose pages are asked for first) and the plain gather from a mapping (one disk wait
per row in turn), in one run on the same file and the same ids.

    python benchmarks/cold_rerank.py --rows 2000000 --candidates 1000 --dir /var/tmp
    python benchmarks/cold_rerank.py --file /var/tmp/collection/vectors.f16

Writes a file of `rows` random 512-d rows (or reads an existing `--file`), then for each round
drops the file from the page cache (POSIX_FADV_DONTNEED) and reads `candidates` random rows
each way, cold and then again hot. Prints one JSON line: p50 milliseconds each way, the
resident memory each way left behind over all rounds, and the speed-ups, cold and hot.

On a virtual machine a file written moments ago is still in the host's cache, which the guest
cannot drop: its "cold" reads are fast whatever the way. Point `--file` at a file written long
before (a collection's vectors.f16) for reads that reach the disk.
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
ROW = DIM * 2


def written(path: Path, rows: int) -> None:
    half = HalfVectors(path, DIM)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100_000):
        ids = np.arange(start, min(rows, start + 100_000))
        half.write(ids, rng.standard_normal((len(ids), DIM), dtype=np.float32))
    half.sync()


def evicted(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mapping(path: Path) -> tuple[mmap.mmap, np.ndarray]:
    """The file mapped for random reads, as the previous release mapped it."""
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), os.path.getsize(path) // ROW * ROW, prot=mmap.PROT_READ)
    mapped.madvise(mmap.MADV_RANDOM)
    return mapped, np.frombuffer(mapped, dtype=np.float16).reshape(-1, DIM)


def row_by_row(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A gather from the mapping, without asking for the pages first."""
    _, rows = mapping(path)
    return lambda ids: rows[ids].astype(np.float32)


def pages_first(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The previous release's read: every candidate's page asked for (MADV_WILLNEED) before the
    gather from the mapping."""
    mapped, rows = mapping(path)

    def read(ids: np.ndarray) -> np.ndarray:
        offsets = np.asarray(ids, dtype=np.int64) * ROW
        pages = np.unique(np.concatenate([offsets, offsets + ROW - 1]) // mmap.PAGESIZE)
        for run in np.split(pages, np.flatnonzero(np.diff(pages) != 1) + 1):
            start = int(run[0]) * mmap.PAGESIZE
            mapped.madvise(
                mmap.MADV_WILLNEED, start, min(len(run) * mmap.PAGESIZE, len(mapped) - start)
            )
        return rows[ids].astype(np.float32)

    return read


def all_asked_first(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The release before's read: every row asked for (POSIX_FADV_WILLNEED), cached or not,
    before any is read with pread."""
    fd = os.open(path, os.O_RDONLY)

    def read(ids: np.ndarray) -> np.ndarray:
        offsets = (np.asarray(ids, dtype=np.int64) * ROW).tolist()
        rows = np.empty((len(offsets), DIM), dtype=np.float16)
        for offset in offsets:
            os.posix_fadvise(fd, offset, ROW, os.POSIX_FADV_WILLNEED)
        for buffer, offset in zip(rows, offsets, strict=True):
            os.preadv(fd, [buffer], offset)
        return rows.astype(np.float32)

    return read


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


def measured(path: Path, candidates: int, rounds: int) -> dict:
    reads = {
        "row by row": row_by_row(path),
        "pages first (an earlier release)": pages_first(path),
        "all asked, then pread (release before)": all_asked_first(path),
        "cached at once, the rest asked, then pread": HalfVectors(path, DIM).read,
    }
    rows = os.path.getsize(path) // ROW
    rng = np.random.default_rng(1)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in reads}
    for _ in range(rounds):
        ids = rng.choice(rows, candidates, replace=False)
        for name, read in reads.items():
            times[name].append(timed_reads(path, read, ids))
    return {
        name: {
            "cold_p50_ms": round(float(np.median([t[0] for t in samples])), 2),
            "hot_p50_ms": round(float(np.median([t[1] for t in samples])), 2),
            "resident_mb_added": round(sum(t[2] for t in samples), 1),
        }
        for name, samples in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--file", type=Path, help="an existing file of float16 rows to read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = args.file or Path(folder) / "vectors.f16"
        if args.file is None:
            written(path, args.rows)
        figures = measured(path, args.candidates, args.rounds)
    cold = {name: figure["cold_p50_ms"] for name, figure in figures.items()}
    hot = {name: figure["hot_p50_ms"] for name, figure in figures.items()}
    new = "cached at once, the rest asked, then pread"
    print(
        json.dumps(
            {
                "file": str(args.file) if args.file else "new",
                "rows": os.path.getsize(path) // ROW if args.file else args.rows,
                "candidates": args.candidates,
                **figures,
                "cold_speedup": {name: round(ms / cold[new], 2) for name, ms in cold.items()},
                "hot_speedup": {name: round(ms / hot[new], 2) for name, ms in hot.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
