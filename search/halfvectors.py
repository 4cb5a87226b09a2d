"""The full vectors behind a compressed index, on disk: one float16 row per image id, read only
for a query's candidates when they are re-ranked to exact cosines.

Half precision is enough to re-rank: it changes a cosine by about 1e-4, far below the gaps that
order results, and halves the disk of float32. The file is derived data, like the index file: a
row is written after its catalog transaction commits, the file is synced before an index file
names a generation, and a rebuild from the catalog (after a crash) rewrites every row.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from search.storage import writing

HALF_VECTORS = "vectors.f16"


class HalfVectors:
    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._map: np.ndarray | None = None
        self._mapping: mmap.mmap | None = None

    def write(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows at their ids; a run of consecutive ids (a batch of new images) is one write."""
        order = np.argsort(ids)
        ids = np.asarray(ids, dtype=np.int64)[order]
        rows = np.asarray(vectors, dtype=np.float16)[order]
        starts = [0, *(np.flatnonzero(np.diff(ids) != 1) + 1).tolist()]
        with writing(f"writing {self.path}"):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
                    os.pwrite(fd, rows[start:end].tobytes(), int(ids[start]) * self.dim * 2)
            finally:
                os.close(fd)

    def sync(self) -> None:
        with writing(f"syncing {self.path}"):
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows of `ids`, in their order (each must have been written)."""
        top = int(ids.max()) + 1 if len(ids) else 0
        if self._map is None or len(self._map) < top:
            self._map = self._mapped()
        self._prefetch(ids)
        return self._map[ids].astype(np.float32)

    def _mapped(self) -> np.ndarray:
        """The whole file, mapped for random reads: without MADV_RANDOM every candidate would
        read ahead 128 KB of rows nobody asked for."""
        with open(self.path, "rb") as handle:
            self._mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        self._mapping.madvise(mmap.MADV_RANDOM)
        return np.frombuffer(self._mapping, dtype=np.float16).reshape(-1, self.dim)

    def _prefetch(self, ids: np.ndarray) -> None:
        """Ask for every page the rows lie on before touching any: a cold file then costs one
        round of reads in parallel, not a disk wait per row in turn (1,000 rows not in the page
        cache: 3.3 ms against 69 ms here; cached, the asking costs 1.3 ms more than the 0.8 ms
        gather: benchmarks/cold_rerank.py)."""
        row, page, size = self.dim * 2, mmap.PAGESIZE, len(self._mapping)
        offsets = np.asarray(ids, dtype=np.int64) * row
        pages = np.unique(np.concatenate([offsets // page, (offsets + row - 1) // page]))
        for run in np.split(pages, np.flatnonzero(np.diff(pages) != 1) + 1) if len(pages) else []:
            start = int(run[0]) * page
            self._mapping.madvise(mmap.MADV_WILLNEED, start, min(len(run) * page, size - start))
