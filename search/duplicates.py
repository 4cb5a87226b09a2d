"""Copies of one photo in a collection: byte-identical files (the same SHA-256) and near
duplicates (resized, re-encoded, re-saved, burst shots: a cosine of at least a threshold).

Found through the vector index, never by comparing all n² pairs: each image asks for its
NEIGHBOURS nearest images, in batches, and the pairs above the threshold join into connected
groups. A chain of burst shots can link photos that are not alike end to end (immich's users
report such false duplicates), so each connected group is split around its best copy: a group
shown holds the best copy first and only images that are near-duplicates of that copy itself,
which makes "keep the first, drop the rest" safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import networkx as nx
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from search.catalog import Catalog, ImageRecord
from search.vectors import VectorIndex

NEIGHBOURS = 16  # a photo with more near copies than this still joins them through theirs
PROBES = 8  # lists an IVF probes per image: a copy lies in its original's list or next to it
CHUNK = 4096  # images asked about at once (their vectors, 8 MB at 512-d)


@dataclass
class Copy:
    record: ImageRecord
    score: float  # cosine with the group's best copy (1 for the best itself)
    same_file: bool  # the best copy's bytes exactly


@dataclass
class Pairs:
    """Every pair of images at `floor` or closer, with its cosine: the one pass over the
    collection, from which the groups at any threshold from `floor` up are read."""

    first: np.ndarray
    second: np.ndarray
    score: np.ndarray
    floor: float

    def above(self, threshold: float) -> Iterator[tuple[int, int]]:
        keep = self.score >= threshold
        return zip(self.first[keep].tolist(), self.second[keep].tolist(), strict=True)


def find_pairs(catalog: Catalog, vectors: VectorIndex, floor: float) -> Pairs:
    """Each image's neighbours at `floor` or above, and every two files of the same bytes."""
    parts = []
    for ids, chunk in _chunks(catalog):
        scores, found = vectors.neighbours(chunk, NEIGHBOURS + 1, PROBES)
        close = (scores >= floor) & (found >= 0) & (found != ids[:, np.newaxis])
        rows, columns = np.nonzero(close)
        parts.append((ids[rows], found[rows, columns], scores[rows, columns]))
    with catalog.sessions() as session:
        first, second = _same_bytes(session)
    parts.append((first, second, np.ones(len(first), np.float32)))
    joined = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return Pairs(*joined, floor=floor)


def _chunks(catalog: Catalog) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The vectors CHUNK at a time, each chunk read in a short transaction of its own: one read
    transaction held through a pass of minutes would keep SQLite from checkpointing its WAL
    while an indexer writes."""
    last = 0
    while True:
        with catalog.sessions() as session:
            chunk = next(Catalog.vector_chunks(session, CHUNK, after=last), None)
        if chunk is None:
            return
        yield chunk
        last = int(chunk[0][-1])


def duplicate_groups(catalog: Catalog, pairs: Pairs, threshold: float) -> list[list[Copy]]:
    """Every group of two or more copies at `threshold`, best copy first; larger groups
    first."""
    assert threshold >= pairs.floor, "the pairs were found at a higher threshold"
    graph = nx.Graph(pairs.above(threshold))
    with catalog.sessions() as session:
        records = _records(session, list(graph.nodes))
    groups = [
        group
        for component in nx.connected_components(graph)
        # An image deleted since the pairs were found is simply not shown.
        for group in _around_best(
            _best_first(records[i] for i in component if i in records), threshold
        )
    ]
    return sorted(groups, key=lambda group: (-len(group), group[0].record.id))


def _same_bytes(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """For each content hash held by more than one image: its first image paired with each
    other one."""
    shared = (
        select(ImageRecord.sha256)
        .group_by(ImageRecord.sha256)
        .having(func.count() > 1)
        .scalar_subquery()
    )
    rows = session.execute(
        select(ImageRecord.sha256, ImageRecord.id).where(ImageRecord.sha256.in_(shared))
    )
    first: dict[str, int] = {}
    pairs = [
        (first[sha256], image_id)
        for sha256, image_id in rows
        if first.setdefault(sha256, image_id) != image_id
    ]
    return np.array([a for a, _ in pairs], np.int64), np.array([b for _, b in pairs], np.int64)


def _records(session: Session, ids: list[int]) -> dict[int, ImageRecord]:
    """The rows, with their vectors, of every image that has a copy."""
    rows: dict[int, ImageRecord] = {}
    for start in range(0, len(ids), 10_000):
        part = select(ImageRecord).where(ImageRecord.id.in_(ids[start : start + 10_000]))
        rows.update((row.id, row) for row in session.scalars(part))
    return rows


def _best_first(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Most pixels first, then the earliest capture (the original, before any export), then
    the first indexed."""
    return sorted(records, key=lambda r: (-r.width * r.height, r.taken_at, r.id))


def _around_best(records: list[ImageRecord], threshold: float) -> Iterator[list[Copy]]:
    """The best remaining image and its own near copies, until none has a copy left."""
    while len(records) > 1:
        best = records[0]
        scores = np.stack([r.vector for r in records]) @ best.vector
        near = [
            Copy(r, float(score), r.sha256 == best.sha256)
            for r, score in zip(records, scores.tolist(), strict=True)
            if score >= threshold or r.sha256 == best.sha256
        ]
        if len(near) > 1:
            yield near
        taken = {copy.record.id for copy in near}
        records = [r for r in records if r.id not in taken]
