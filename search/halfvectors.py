"""The full vectors behind a compressed index, on disk: one float16 row per image id, read only
for a query's candidates when they are re-ranked to exact cosines.

Half precision is enough to re-rank: it changes a cosine by about 1e-4, far below the gaps that
order results, and halves the disk of float32. The file is derived data, like the index file: a
row is written after its catalog transaction commits, the file is synced before an index file
names a generation, and a rebuild from the catalog (after a crash) rewrites every row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from search.errors import CollectionError
from search.storage import writing

HALF_VECTORS = "vectors.f16"
NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux: a read that fails rather than wait for the disk


class HalfVectors:
    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._handle: BinaryIO | None = None  # opened for the first read, closed with self

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
        """float32 rows of `ids`, in their order (each must have been written).

        A row the page cache holds is read at once (RWF_NOWAIT); every other is asked of the
        kernel (POSIX_FADV_WILLNEED) before any of them is read, so rows not in the cache cost
        one round of reads in parallel, not a disk wait per row in turn. They are read with
        pread, not through a mapping, so they never count as this process's memory. 1,000 rows
        of a file not in the page cache, p50: 1.5 ms here, against 3.1 for a mapping whose
        pages were asked for first, and 68 to 92 row by row (benchmarks/cold_rerank.py); 1,500
        cached rows 1.66 ms, against 2.06 asking the kernel for each first."""
        row = self.dim * 2
        offsets = (np.asarray(ids, dtype=np.int64) * row).tolist()
        rows = np.empty((len(offsets), self.dim), dtype=np.float16)
        fd = self._file().fileno()
        cold = [i for i, offset in enumerate(offsets) if not _cached(fd, rows[i], offset)]
        for i in cold:
            os.posix_fadvise(fd, offsets[i], row, os.POSIX_FADV_WILLNEED)
        for i in cold:
            if os.preadv(fd, [rows[i]], offsets[i]) != row:
                raise CollectionError(f"{self.path} lacks row {ids[i]}: rebuild the index")
        return rows.astype(np.float32)

    def _file(self) -> BinaryIO:
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open)
            except OSError as exc:
                raise CollectionError(f"cannot read {self.path}: {exc.strerror}") from exc
            # No read-ahead: a candidate is one row, and 128 KB around it would be waste.
            os.posix_fadvise(self._handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        return self._handle


def _cached(fd: int, buffer: np.ndarray, offset: int) -> bool:
    """Whether the row at `offset` was read into `buffer` from the page cache, without waiting
    for the disk (False where the kernel or file system cannot tell: then it is read later)."""
    try:
        return os.preadv(fd, [buffer], offset, NOWAIT) == buffer.nbytes
    except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: no RWF_NOWAIT here
        return False
