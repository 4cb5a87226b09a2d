"""Keeping every image's zero-shot tags (search/tags.py) current. After each run the images whose
vector or vocabulary is newer than their tags are tagged from their stored vectors, a chunk per
transaction: a crash loses nothing, and the next run goes on where this one stopped. The caller
holds the writer lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.orm import Session

from search.catalog import (
    UNTAGGED,
    VOCABULARY,
    Catalog,
    ImageRecord,
    ImageTag,
    Meta,
    StoredVector,
    Tag,
    TagPrompts,
    unpacked,
)
from search.collection import Collection
from search.tags import Prompts, Vocabulary

if TYPE_CHECKING:
    from search.model import Encoder

CHUNK = 10_000  # images per transaction


class Tagger:
    def __init__(self, collection: Collection, encoder: Callable[[], Encoder]) -> None:
        """`encoder` is called only when the vocabulary has not been embedded by the
        collection's model yet."""
        self.collection = collection
        self.catalog = collection.catalog
        self._encoder = encoder

    def use(self, vocabulary: Vocabulary) -> None:
        """Make `vocabulary` the collection's; every image is tagged again by `catch_up`."""
        with self.catalog.transaction() as session:
            if session.get(Meta, VOCABULARY) and _vocabulary(session) == vocabulary:
                return
            session.execute(delete(ImageTag))
            session.execute(delete(Tag))
            rows = [{"id": number, "name": name} for number, name in enumerate(vocabulary.names, 1)]
            if rows:
                session.execute(insert(Tag), rows)
            session.execute(update(ImageRecord).values(tagged=False))
            session.merge(Meta(key=VOCABULARY, value=1))
            Catalog.bump_generation(session)

    def catch_up(self) -> int:
        """Tag every image whose tags are missing or stale; returns how many were. A collection
        that never chose a vocabulary takes the default one first."""
        with self.catalog.sessions() as session:
            chosen = session.get(Meta, VOCABULARY) is not None
            vocabulary = _vocabulary(session)
        if not chosen:
            vocabulary = Vocabulary.default()
            self.use(vocabulary)
        prompts = self._prompts(vocabulary) if vocabulary.names else None
        done = 0
        while tagged := self._chunk(prompts):
            done += tagged
        return done

    def _chunk(self, prompts: Prompts | None) -> int:
        """Tag up to CHUNK untagged images in one transaction; returns how many."""
        with self.catalog.transaction() as session:
            rows = session.execute(
                select(StoredVector.id, StoredVector.data)
                .join(ImageRecord, ImageRecord.id == StoredVector.id)
                .where(UNTAGGED)
                .order_by(ImageRecord.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                return 0
            ids, vectors = unpacked(rows)
            # The chunk is every untagged image up to its last id: a condition the statements
            # can share, where binding the ids themselves cost SQLAlchemy about 6 us each.
            chunk = and_(UNTAGGED, ImageRecord.id <= int(ids[-1]))
            listed = select(ImageRecord.id).where(chunk)
            # Nothing of these is loaded in the session: there is nothing to synchronise.
            unsynchronised = {"synchronize_session": False}
            tagged = delete(ImageTag).where(ImageTag.image_id.in_(listed))
            session.execute(tagged, execution_options=unsynchronised)
            if prompts is not None:
                _insert_tags(session, ids, vectors, prompts)
            done = update(ImageRecord).where(chunk).values(tagged=True)
            session.execute(done, execution_options=unsynchronised)
            Catalog.bump_generation(session)
        return len(ids)

    def _prompts(self, vocabulary: Vocabulary) -> Prompts:
        """The vocabulary embedded by the collection's model: from the catalog, else now."""
        spec = self.collection.spec
        key = {"model": spec.identity, "vocabulary": vocabulary.digest}
        with self.catalog.sessions() as session:
            if cached := session.get(TagPrompts, key):
                return Prompts.unpacked(cached.vectors, spec.embed_dim, cached.scale)
        prompts = Prompts.embed(self._encoder(), vocabulary)
        with self.catalog.transaction() as session:
            session.add(TagPrompts(**key, scale=prompts.scale, vectors=prompts.packed()))
        return prompts


def retag(collection: Collection, vocabulary: Vocabulary, encoder: Callable[[], Encoder]) -> int:
    """`clipsearch tags --vocabulary`: the collection moves to `vocabulary`, and every image
    not tagged with it yet (all of them, unless an earlier run of this was interrupted) is
    tagged; returns how many were. The vectors stay, saved under the new generation."""
    with collection.writer():
        generation = collection.catalog.generation()
        tagger = Tagger(collection, encoder)
        tagger.use(vocabulary)
        done = tagger.catch_up()
        collection.carry_vectors(generation, collection.catalog.generation())
    return done


def _vocabulary(session: Session) -> Vocabulary:
    return Vocabulary(Catalog.tag_names(session))


def _insert_tags(session: Session, ids: np.ndarray, vectors: np.ndarray, prompts: Prompts) -> None:
    """Tag ids are vocabulary positions from 1 (Tagger.use)."""
    rows, tags, scores = prompts.tag(vectors)
    columns = zip(ids[rows].tolist(), (tags + 1).tolist(), scores.tolist(), strict=True)
    values = [{"image_id": i, "tag_id": tag, "score": score} for i, tag, score in columns]
    if values:
        session.execute(insert(ImageTag.__table__), values)
