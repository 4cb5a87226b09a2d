"""A source of encoded results: this machine's decode workers feeding this process's model.

The writer takes any `Source`, so one that encodes elsewhere (a Ray cluster) fits beside this.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from indexer.items import Encoded, Failed, Result, Seen
from indexer.pipeline import Batch, KnownContent, Loaded, load_batches
from indexer.scan import FoundFile
from search.errors import ImageError
from search.imaging import DEFAULT_MAX_PIXELS, decode_for_model
from search.sandbox import run_bounded

if TYPE_CHECKING:
    from search.model import Encoder


class Source(Protocol):
    def batches(self, files: Sequence[FoundFile], known: Iterable[str]) -> Iterator[list[Result]]:
        """Every file once, as Encoded, Seen (its hash is in `known`) or Failed."""
        ...

    def encode_one(self, seen: Seen) -> Encoded | Failed:
        """Encode a file now after all: the row whose vector it was to reuse changed."""
        ...


def default_workers() -> int:
    """One decoding process per core: they spend much of their time waiting on reads and on the
    encoder's queue, so cores - 1 leaves a 2-core machine a third slower (benchmarks/)."""
    return max(1, min(16, os.cpu_count() or 2))


class LocalSource:
    def __init__(
        self,
        encoder: Encoder,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.encoder = encoder
        self.batch_size = batch_size or encoder.batch_size
        self.workers = default_workers() if workers is None else workers
        self.max_pixels = max_pixels

    def batches(self, files: Sequence[FoundFile], known: Iterable[str]) -> Iterator[list[Result]]:
        layout, content, size = self.encoder.layout, KnownContent(known), self.batch_size
        allocate = functools.partial(self.encoder.staging, size)
        for batch in load_batches(
            files, layout, content, size, self.workers, self.max_pixels, allocate
        ):
            yield encoded(self.encoder, batch)

    def encode_one(self, seen: Seen) -> Encoded | Failed:
        return encode_file(self.encoder, seen, self.max_pixels)


def encoded(encoder: Encoder, batch: Batch) -> list[Result]:
    """A decoded batch with each Loaded item encoded (in one forward pass) and the others as
    they were, in order."""
    vectors = iter(_encode(encoder, batch.pixels))
    return [_encoded(i, next(vectors)) if isinstance(i, Loaded) else i for i in batch]


def _encode(encoder: Encoder, pixels: np.ndarray) -> np.ndarray:
    if not len(pixels):
        return np.empty((0, encoder.dim), np.float32)
    return encoder.encode_pixels(pixels)


def encode_file(encoder: Encoder, seen: Seen, max_pixels: int) -> Encoded | Failed:
    """A file encoded now after all (the row whose vector it was to reuse changed), decoded in
    a bounded child like any upload."""
    file = seen.file
    try:
        data = file.absolute.read_bytes()
        decoded = run_bounded(decode_for_model, data, encoder.layout, max_pixels)
    except ImageError as exc:
        return Failed(file, str(exc))
    except OSError as exc:
        return Failed(file, f"unreadable: {exc.strerror}")
    vector = encoder.encode_pixels(decoded.pixels[np.newaxis])[0]
    return Encoded(file, seen.sha256, vector, decoded.width, decoded.height, decoded.taken_at)


def _encoded(item: Loaded, vector: np.ndarray) -> Encoded:
    return Encoded(item.file, item.sha256, vector, item.width, item.height, item.taken_at)
