"""Read → hash → decode → preprocess in worker processes, so the encoder never waits on JPEGs."""

from __future__ import annotations

import ctypes
import hashlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from indexer.scan import FoundFile
from search.errors import ImageError
from search.imaging import DEFAULT_MAX_PIXELS, decode

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Loaded:
    """A file read and decoded; `pixels` is None when its content is already in the catalog
    (same hash), so its vector is reused instead of encoded again. Collating moves the pixels
    into the batch's one tensor and sets `encode`."""

    file: FoundFile
    sha256: str
    pixels: torch.Tensor | None = None
    width: int = 0
    height: int = 0
    taken_at: datetime | None = None
    encode: bool = False


@dataclass
class Failed:
    file: FoundFile
    reason: str


@dataclass
class Batch:
    items: list[Loaded | Failed]
    pixels: torch.Tensor | None  # the stacked pixels of the items that need encoding

    @property
    def to_encode(self) -> list[Loaded]:
        """The items whose rows of `pixels` these are, in order."""
        return [item for item in self.items if isinstance(item, Loaded) and item.encode]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader on CUDA, so host-to-GPU copies can run asynchronously."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class _Files(Dataset[Loaded | Failed]):
    def __init__(
        self,
        files: Sequence[FoundFile],
        preprocess: Callable[[Any], torch.Tensor],
        known_hashes: frozenset[str],
        max_pixels: int,
        min_side: int | None,
    ) -> None:
        self.files = files
        self.preprocess = preprocess
        self.known_hashes = known_hashes
        self.max_pixels = max_pixels
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Loaded | Failed:
        file = self.files[index]
        try:
            data = file.absolute.read_bytes()
        except FileNotFoundError:
            return Failed(file, "vanished before it could be read")
        except OSError as exc:
            return Failed(file, f"unreadable: {exc.strerror}")
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self.known_hashes:
            return Loaded(file, sha256)
        try:
            picture = decode(data, self.max_pixels, self.min_side)
            pixels = self.preprocess(picture.image)
        except ImageError as exc:
            return Failed(file, str(exc))
        return Loaded(file, sha256, pixels, picture.width, picture.height, picture.taken_at)


def _collate(items: list[Loaded | Failed]) -> Batch:
    """Stack a chunk's pixels into one tensor: one shared-memory hand-over per chunk instead of
    one per image."""
    tensors = []
    for item in items:
        if isinstance(item, Loaded) and item.pixels is not None:
            tensors.append(item.pixels)
            item.pixels, item.encode = None, True
    return Batch(items, torch.stack(tensors) if tensors else None)


def _worker_init(_worker_id: int) -> None:
    # Each worker decodes one chunk at a time; extra intra-op threads only fight the encoder.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: let the main process stop the run cleanly
    # instead of seeing its workers die mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_when_parent_left
    _die_with_parent()


def _quiet_when_parent_left(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    """A worker still handing a batch over when the run stops loses its connection (Python's
    resource sharer reports it through sys.excepthook): that is the stop, not an error worth a
    traceback on the user's terminal."""
    if not issubclass(kind, ConnectionError | EOFError):
        sys.__excepthook__(kind, error, trace)


def _die_with_parent() -> None:
    """A killed indexer must not leave workers behind: they hold its inherited collection lock
    (and memory) until they notice, seconds later, and a re-run would find the lock taken."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def load_batches(
    files: Sequence[FoundFile],
    preprocess: Callable[[Any], torch.Tensor],
    known_hashes: frozenset[str],
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Iterator[Batch]:
    """Workers take small chunks (a worker given a whole encoder batch would leave the others
    idle on a small run); the encoder's batches are put together here."""
    chunk = max(1, min(32, batch_size // (2 * workers))) if workers else batch_size
    loader = DataLoader(
        _Files(files, preprocess, known_hashes, max_pixels, min_side),
        batch_size=chunk,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=max(2, 2 * batch_size // (chunk * workers)) if workers else None,
    )
    pending: list[Batch] = []
    for part in loader:
        pending.append(part)
        if sum(len(p.items) for p in pending) >= batch_size:
            yield _merge(pending, pin_memory)
            pending = []
    if pending:
        yield _merge(pending, pin_memory)


def _merge(parts: list[Batch], pin_memory: bool) -> Batch:
    tensors = [part.pixels for part in parts if part.pixels is not None]
    batch = Batch(
        [item for part in parts for item in part.items], torch.cat(tensors) if tensors else None
    )
    return batch.pin_memory() if pin_memory else batch
