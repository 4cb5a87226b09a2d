"""Query encoding shared by a server's threads: one model run at a time (concurrent forward
passes only fight over the same cores), texts of concurrent requests encoded in one batch, and
recent texts remembered, since every further page of a query asks for the same text again."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from search.model import Encoder

MAX_BATCH = 32
REMEMBERED_TEXTS = 2048


@dataclass(eq=False)
class _Job:
    text: str
    vector: np.ndarray | None = None
    error: Exception | None = None
    done: bool = False


class QueryEncoder:
    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._model = threading.Lock()  # held while the model runs
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []
        self.text = functools.lru_cache(maxsize=REMEMBERED_TEXTS)(self._text)

    def _text(self, text: str) -> np.ndarray:
        """Wait for the model; whoever gets it encodes every text waiting by then, so under
        load one forward pass answers many requests."""
        job = _Job(text)
        with self._queue_lock:
            self._queue.append(job)
        while not job.done:
            with self._model:
                if job.done:
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    vectors = self.encoder.encode_texts([waiting.text for waiting in batch])
                    for waiting, vector in zip(batch, vectors, strict=True):
                        waiting.vector = vector
                except Exception as exc:
                    for waiting in batch:
                        waiting.error = exc
                    raise
                finally:
                    for waiting in batch:
                        waiting.done = True
        if job.error is not None:
            raise job.error
        assert job.vector is not None
        return job.vector

    def pixels(self, pixels: np.ndarray) -> np.ndarray:
        """One image laid out by `model_input`."""
        with self._model:
            return self.encoder.encode_pixels(pixels[np.newaxis])[0]
