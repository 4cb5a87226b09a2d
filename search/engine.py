"""The query engine: turns texts, images and ids into one query vector and answers it with
scored catalog rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import select

from search.catalog import ImageRecord
from search.collection import Collection
from search.errors import BadRequest, NotFound
from search.filters import Filters
from search.imaging import decode

if TYPE_CHECKING:
    from search.model import Encoder

MAX_K = 1000
MAX_OFFSET = 10_000
MAX_QUERY_CHARS = 1000
MAX_TERMS = 16


@dataclass(frozen=True)
class Term:
    """One part of a query: its kind, its value and its weight (negative terms subtract)."""

    kind: Literal["text", "image_id", "image_bytes"]
    value: str | int | bytes
    weight: float = 1.0


@dataclass
class Hit:
    record: ImageRecord
    score: float

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": record.id,
            "path": record.path,
            "url": f"/images/{record.id}",
            "thumbnail_url": f"/thumbs/{record.id}",
            "score": round(self.score, 6),
            "width": record.width,
            "height": record.height,
            "attributes": record.attributes or {},
        }


@dataclass
class Page:
    hits: list[Hit]
    k: int
    offset: int
    took_ms: float

    def to_json(self, model: str) -> dict[str, Any]:
        """The response shape shared by the JSON API and `clipsearch search --json`."""
        return {
            "results": [hit.to_json() for hit in self.hits],
            "count": len(self.hits),
            "k": self.k,
            "offset": self.offset,
            "took_ms": round(self.took_ms, 2),
            "model": model,
        }


class SearchEngine:
    """Shared by every request of a server: the model and the vectors are loaded once, and a
    newer index written by the indexer is picked up on the next query."""

    def __init__(self, collection: Collection, encoder: Encoder) -> None:
        self.collection = collection
        self.encoder = encoder
        self._lock = threading.Lock()
        self._vectors, self._generation = collection.load_vectors()

    @property
    def size(self) -> int:
        return len(self._vectors)

    def refresh(self) -> None:
        """Follow the catalog: load the saved index of its generation if there is one; rebuild
        from the catalog only when no indexer is mid-run (else keep answering from the last
        complete index)."""
        generation = self.collection.catalog.generation()
        if generation == self._generation:
            return
        with self._lock:
            if generation == self._generation:
                return
            if not self.collection.vectors_path(generation).exists() and (
                self.collection.writer_active()
            ):
                return
            self._vectors, self._generation = self.collection.load_vectors()

    def query_vector(self, positive: Sequence[Term], negative: Sequence[Term] = ()) -> np.ndarray:
        if not positive:
            raise BadRequest("give a query: text, an image id or an image")
        if len(positive) + len(negative) > MAX_TERMS:
            raise BadRequest(f"at most {MAX_TERMS} query terms")
        total = np.zeros(self.encoder.dim, dtype=np.float32)
        for sign, terms in ((1.0, positive), (-1.0, negative)):
            for term in terms:
                total += sign * term.weight * self._embed(term)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise BadRequest("the query terms cancel out")
        return total / norm

    def _embed(self, term: Term) -> np.ndarray:
        if term.kind == "text":
            text = str(term.value).strip()
            if not text:
                raise BadRequest("empty query text")
            if len(text) > MAX_QUERY_CHARS:
                raise BadRequest(f"query text is over {MAX_QUERY_CHARS} characters")
            return self.encoder.encode_texts([text])[0]
        if term.kind == "image_id":
            return self.image(int(term.value)).vector
        assert isinstance(term.value, bytes)
        picture = decode(term.value, min_side=self.encoder.decode_min_side)
        return self.encoder.encode_images([picture.image])[0]

    def query(
        self,
        positive: Sequence[Term],
        negative: Sequence[Term] = (),
        k: int = 20,
        offset: int = 0,
        min_score: float | None = None,
        filters: Filters | None = None,
    ) -> Page:
        """Embed the terms and search; took_ms covers both, as a caller experiences it."""
        started = time.perf_counter()
        page = self.search(self.query_vector(positive, negative), k, offset, min_score, filters)
        page.took_ms = (time.perf_counter() - started) * 1000
        return page

    def search(
        self,
        vector: np.ndarray,
        k: int = 20,
        offset: int = 0,
        min_score: float | None = None,
        filters: Filters | None = None,
    ) -> Page:
        started = time.perf_counter()
        if not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be between 1 and {MAX_K}")
        if not 0 <= offset <= MAX_OFFSET:
            raise BadRequest(f"offset must be between 0 and {MAX_OFFSET}")
        self.refresh()
        allowed = self._matching_ids(filters) if filters else None
        scores, ids = self._vectors.search(vector, offset + k, allowed)
        ranked = [
            (int(i), float(s))
            for s, i in zip(scores[offset:], ids[offset:], strict=True)
            if min_score is None or s >= min_score
        ]
        records = self._records([i for i, _ in ranked])
        hits = [Hit(records[i], s) for i, s in ranked if i in records]
        return Page(hits, k, offset, (time.perf_counter() - started) * 1000)

    def image(self, image_id: int) -> ImageRecord:
        with self.collection.catalog.sessions() as session:
            record = session.get(ImageRecord, image_id)
        if record is None:
            raise NotFound(f"no image with id {image_id}")
        return record

    def _records(self, ids: list[int]) -> dict[int, ImageRecord]:
        if not ids:
            return {}
        with self.collection.catalog.sessions() as session:
            rows = session.scalars(select(ImageRecord).where(ImageRecord.id.in_(ids)))
            return {row.id: row for row in rows}

    def _matching_ids(self, filters: Filters) -> np.ndarray:
        with self.collection.catalog.sessions() as session:
            ids = session.scalars(select(ImageRecord.id).where(filters.where())).all()
        return np.asarray(ids, dtype=np.int64)
