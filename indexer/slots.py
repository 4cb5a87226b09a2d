"""Pixel buffers that decode workers share with the main process.

A decoded image crosses as a copy out of shared memory (into the batch the encoder reads) instead
of a pickle through a socket.
Receiving the pickle cost the main process about 80 microseconds per 224 px image on the 2-core
Xeon, against 15 for the small message and the copy; on a GPU machine that process, not the
encoder, is what bounds the indexer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO

import numpy as np

from search.errors import StorageError

# /dev/shm first (memory), then the temporary folder (a file the page cache holds).
PLACES = ("/dev/shm", None)


class PixelSlots:
    """`rows` workers, `depth` images each. Worker `row` writes its n-th decoded image to slot
    n % depth; as the main process gives a worker at most `depth` files before taking their
    results, no slot is written again before it was read."""

    def __init__(self, rows: int, depth: int, size: int) -> None:
        self.shape = (rows, depth, size, size, 3)
        self.file = _reserved_file(int(np.prod(self.shape)))
        self.array = np.memmap(self.file.name, np.uint8, "r+", shape=self.shape)

    def worker_view(self, row: int) -> WorkerSlots:
        return WorkerSlots(self.file.name, self.shape, row)

    def slot(self, row: int, slot: int) -> np.ndarray | None:
        """The slot itself (None for -1, no pixels): the worker writes it again once it is sent
        more files."""
        return None if slot < 0 else self.array[row, slot]

    def close(self) -> None:
        del self.array
        self.file.close()  # and deleted


class WorkerSlots:
    """A worker's row, sent to it by name and mapped there."""

    def __init__(self, path: str, shape: tuple[int, ...], row: int) -> None:
        self.path, self.shape, self.row = path, shape, row
        self.written = 0
        self.slots: np.ndarray | None = None

    def open(self) -> None:
        self.slots = np.memmap(self.path, np.uint8, "r+", shape=self.shape)[self.row]

    def put(self, pixels: np.ndarray) -> int:
        assert self.slots is not None, "open() first"
        slot = self.written % len(self.slots)
        self.slots[slot] = pixels
        self.written += 1
        return slot


def _reserved_file(size: int) -> IO[bytes]:
    """A temporary file with its blocks allocated now: a sparse one would kill a worker with
    SIGBUS on a full disk (or a small /dev/shm) instead of failing here with a reason."""
    reason = ""
    for place in PLACES:
        if place is not None and not os.path.isdir(place):
            continue
        file = tempfile.NamedTemporaryFile(dir=place, prefix="clipsearch-pixels-")  # noqa: SIM115
        try:
            allocate = getattr(os, "posix_fallocate", None)  # Linux; elsewhere a sparse file
            allocate(file.fileno(), 0, size) if allocate else file.truncate(size)
            return file
        except OSError as exc:
            reason = exc.strerror or str(exc)
            with contextlib.suppress(OSError):
                file.close()
    raise StorageError(f"no room for the decoders' {size / 2**20:.0f} MB of buffers: {reason}")
