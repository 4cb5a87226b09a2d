"""Applying a run's results to the collection: the catalog first, one transaction per batch, then
the vector index, which is derived data saved at the end under the catalog generation it
reflects. After a crash every committed batch is complete, and the next run starts where this one
stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from indexer.items import Encoded, Failed, Result, Seen
from indexer.plan import Key, Known, Plan, Sources
from indexer.scan import FoundFile, Unreadable
from indexer.tagging import Tagger
from search import jsontext
from search.catalog import Failure, ImageRecord, Root, StoredVector
from search.collection import Collection
from search.errors import StorageError
from search.vectors import VectorIndex


@dataclass
class Summary:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    held: int = 0  # still being written: left for a later run
    tagged: int = 0  # images whose tags were (re)computed
    seconds: float = 0.0
    model_seconds: float = 0.0  # of `seconds`, loading the model (once a file needed it)

    def to_json(self) -> dict[str, Any]:
        """`images_per_second` is the indexer's rate once the model is loaded: a fixed cost of
        seconds that would otherwise make small runs look slow."""
        data = asdict(self)
        encoded = self.added + self.updated
        working = self.seconds - self.model_seconds
        data["seconds"] = round(self.seconds, 3)
        data["model_seconds"] = round(self.model_seconds, 3)
        data["images_per_second"] = round(encoded / working, 2) if working > 0 else 0.0
        return data


@dataclass
class _Changes:
    """What one transaction changes, applied to the vector index once it has committed."""

    added: list[tuple[int, np.ndarray]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    inserts: list[tuple[Key, dict[str, Any], np.ndarray]] = field(default_factory=list)


class Writer:
    def __init__(
        self,
        collection: Collection,
        plan: Plan,
        sources: Sources,
        encode_one: Callable[[Seen], Encoded | Failed],
    ) -> None:
        self.collection = collection
        self.catalog = collection.catalog
        self.plan = plan
        self.known = plan.known  # kept current as rows are added, moved and dropped
        self.attributes = sources.attributes
        self.ignore_rules = sources.ignore_rules
        self.catalog_file = sources.catalog
        self.encode_one = encode_one
        self.summary = Summary(unchanged=plan.unchanged, failed=plan.still_failed)
        self.roots = [str(folder) for folder in sources.roots]
        self.root_ids: dict[str, int] = {}
        self.generation = self.started = collection.catalog.generation()
        self.vectors: VectorIndex | None = None  # read once the run changes a vector (_index)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Record the roots and changed attributes, and save the vector index when the run ends,
        also when it ends in an error: what was committed stays, and so does its index if the
        disk allows."""
        try:
            self._begin()
            yield
        except BaseException:
            with contextlib.suppress(StorageError):
                self._save()
            raise
        self._save()

    def _begin(self) -> None:
        with self.catalog.transaction() as session:
            for path in self.roots:
                root = self.catalog.root_for(session, path)
                root.ignore_rules = self.ignore_rules.get(path, root.ignore_rules)
                root.catalog = self.catalog_file
                self.root_ids[path] = root.id
            self._absorb(session)
            for row_id, attributes in self.plan.new_attributes.items():
                row = update(ImageRecord).where(ImageRecord.id == row_id)
                session.execute(row.values(attributes=attributes))
            if self.plan.new_attributes or self.plan.absorbed:
                self._bump(session)  # servers drop the filters they cached over the old values
        if self.plan.duplicates:
            self._index().remove(self.plan.duplicates)
        self.summary.removed = len(self.plan.duplicates)

    def _absorb(self, session: Session) -> None:
        """Recorded folders inside a scanned one join it: their rows keep their ids and
        vectors under the outer root, a second row of one file goes, and so do their roots."""
        session.execute(delete(ImageRecord).where(ImageRecord.id.in_(self.plan.duplicates)))
        for root_id, place in self.plan.absorbed.items():
            into = self.root_ids[place.root]
            for table in (ImageRecord, Failure):
                moved = update(table).where(table.root_id == root_id)
                moved = moved.values(root_id=into, path=place.prefix + table.path)
                # A failure recorded under both roots stays once; the plan dropped such images.
                session.execute(moved.prefix_with("OR IGNORE") if table is Failure else moved)
            session.execute(delete(Failure).where(Failure.root_id == root_id))
            session.execute(delete(Root).where(Root.id == root_id))

    def _index(self) -> VectorIndex:
        """The vector index as the run began, read once a vector changes: a nightly catalog run
        that changes prices, or nothing, never reads it. `write` reads it before its commit,
        as an index rebuilt from the catalog after it would hold the batch already."""
        if self.vectors is None:
            self.vectors, _ = self.collection.load_vectors(self.started)
        return self.vectors

    def _save(self) -> None:
        if self.vectors is None:
            self.collection.carry_vectors(self.started, self.generation)
        elif (
            self.generation != self.started
            or not self.collection.vectors_path(self.generation).exists()
        ):
            self.vectors = self.collection.save_vectors(self.vectors, self.generation)

    def write(self, batch: list[Result]) -> None:
        changes, vectors = _Changes(), self._index()
        with self.catalog.transaction() as session:
            for item in batch:
                if isinstance(item, Failed):
                    self._fail(session, item.file, item.reason, changes)
                elif isinstance(item, Seen):
                    self._reuse(session, item, changes)
                else:
                    self._store(session, item, changes)
            self._insert(session, changes)
            self.catalog.bump_generation(session)
            generation = self.catalog.generation(session)
        self.generation = generation
        vectors.remove(changes.dropped)
        if changes.added:
            ids, rows = zip(*changes.added, strict=True)
            vectors.add(np.array(ids), np.stack(rows))

    def _store(self, session: Session, item: Encoded, changes: _Changes) -> None:
        """Update the file's row in place, so its id (and links to it) survive, or queue it for
        the batch's one bulk insert."""
        file = item.file
        key = (file.root, file.path)
        vector = np.asarray(item.vector, dtype=np.float32)
        fields = {
            "size": file.size,
            "mtime_ns": file.mtime_ns,
            "sha256": item.sha256,
            "width": item.width,
            "height": item.height,
            "ext": file.ext,
            "taken_at": item.taken_at or _file_time(file),
            "attributes": self._attributes(key),
            "indexed_at": datetime.now(),
            "tagged": False,  # a new vector: its tags are due
        }
        if key in self.plan.failures:
            session.execute(
                delete(Failure).where(
                    Failure.root_id == self.root_ids[file.root], Failure.path == file.path
                )
            )
        known = self.known.get(key)
        record = session.get(ImageRecord, known.id) if known else None
        if record is None:
            fields.update(root_id=self.root_ids[file.root], path=file.path)
            changes.inserts.append((key, fields, vector))
            return
        for name, value in fields.items():
            setattr(record, name, value)
        record.stored.data = vector.tobytes()
        changes.dropped.append(record.id)
        changes.added.append((record.id, vector))
        self.known[key] = Known(record.id, file.size, file.mtime_ns, item.sha256)
        self.summary.updated += 1

    def _insert(self, session: Session, changes: _Changes) -> None:
        """The batch's new files in two executemany INSERTs (rows, then embeddings), with the
        ids handed out here: ORM inserts that return their ids ran one statement per row."""
        if not changes.inserts:
            return
        ids = self.catalog.next_image_ids(session, len(changes.inserts))
        rows, embeddings = [], []
        for image_id, (key, fields, vector) in zip(ids, changes.inserts, strict=True):
            rows.append({**fields, "id": image_id})
            embeddings.append({"id": image_id, "vector": vector.tobytes()})
            self.known[key] = Known(image_id, fields["size"], fields["mtime_ns"], fields["sha256"])
            changes.added.append((image_id, vector))
        session.execute(insert(ImageRecord.__table__), rows)
        session.execute(insert(StoredVector.__table__), embeddings)
        self.summary.added += len(ids)

    def _reuse(self, session: Session, item: Seen, changes: _Changes) -> None:
        """Content already in the catalog: the file was touched, moved, or is a copy."""
        file = item.file
        key = (file.root, file.path)
        known = self.known.get(key)
        if known and known.sha256 == item.sha256:
            record = session.get(ImageRecord, known.id)
            assert record is not None
            record.size, record.mtime_ns = file.size, file.mtime_ns
            self.known[key] = Known(known.id, file.size, file.mtime_ns, item.sha256)
            self.summary.unchanged += 1
            return
        moved_from = self.plan.missing_by_sha.get(item.sha256)
        if moved_from and not known:
            self._move(session, moved_from.pop(), file)
            return
        like = session.scalars(
            select(ImageRecord).where(ImageRecord.sha256 == item.sha256).limit(1)
        ).first()
        if like is not None:
            copy = Encoded(file, item.sha256, like.vector, like.width, like.height, like.taken_at)
            self._store(session, copy, changes)
            return
        # The only row with this content was changed earlier in this run: encode it after all.
        encoded = self.encode_one(item)
        if isinstance(encoded, Failed):
            self._fail(session, file, encoded.reason, changes)
        else:
            self._store(session, encoded, changes)

    def _move(self, session: Session, old_key: Key, file: FoundFile) -> None:
        key = (file.root, file.path)
        record = session.get(ImageRecord, self.known.pop(old_key).id)
        assert record is not None
        record.root_id, record.path = self.root_ids[file.root], file.path
        record.size, record.mtime_ns = file.size, file.mtime_ns
        record.attributes = self._attributes(key)
        self.known[key] = Known(record.id, file.size, file.mtime_ns, record.sha256)
        self.summary.moved += 1

    def _attributes(self, key: Key) -> dict[str, Any]:
        """A file's catalog columns; none for a folder's photo."""
        return jsontext.loads(self.attributes[key]) if key in self.attributes else {}

    def _fail(self, session: Session, file: FoundFile, reason: str, changes: _Changes) -> None:
        """Record why; a file that broke since it was indexed leaves the index."""
        root_id = self.root_ids[file.root]
        if known := self.known.pop((file.root, file.path), None):
            session.execute(delete(ImageRecord).where(ImageRecord.id == known.id))
            changes.dropped.append(known.id)
        failure = session.scalars(
            select(Failure).where(Failure.root_id == root_id, Failure.path == file.path)
        ).first()
        if failure is None:
            failure = Failure(root_id=root_id, path=file.path, size=0, mtime_ns=0, reason="")
            session.add(failure)
        failure.size, failure.mtime_ns, failure.reason = file.size, file.mtime_ns, reason
        failure.seen_at = datetime.now()
        self.summary.failed += 1

    def record_unreadable(self, unreadable: list[Unreadable]) -> None:
        if not unreadable:
            return
        changes = _Changes()
        with self.catalog.transaction() as session:
            for entry in unreadable:
                file = FoundFile(entry.root, entry.path, 0, 0)
                self._fail(session, file, entry.reason, changes)
            self._bump_if_changed(session, changes.dropped)
        if changes.dropped:
            self._index().remove(changes.dropped)

    def remove_missing(self, present: set[Key]) -> None:
        """Deleted files leave catalog and index; this runs last so moves are found first."""
        gone = [known.id for key, known in self.known.items() if key not in present]
        stale = [key for key in self.plan.failures if key not in present]
        with self.catalog.transaction() as session:
            if gone:
                session.execute(delete(ImageRecord).where(ImageRecord.id.in_(gone)))
            for root, path in stale:
                session.execute(
                    delete(Failure).where(
                        Failure.root_id == self.root_ids[root], Failure.path == path
                    )
                )
            self._bump_if_changed(session, gone)
        if gone:
            self._index().remove(gone)
        self.summary.removed += len(gone)

    def tag(self, tagger: Tagger) -> None:
        """Tag what the run added or changed, and what a new vocabulary left untagged. Tags
        move the generation, not the vectors: the index is saved under the last generation."""
        self.summary.tagged = tagger.catch_up()
        self.generation = self.catalog.generation()

    def _bump_if_changed(self, session: Session, dropped: list[int]) -> None:
        """A new generation only when the set of vectors changed: a run that changes nothing
        writes no new index file."""
        if dropped:
            self._bump(session)

    def _bump(self, session: Session) -> None:
        self.catalog.bump_generation(session)
        self.generation = self.catalog.generation(session)


def _file_time(file: FoundFile) -> datetime:
    return datetime.fromtimestamp(file.mtime_ns / 1e9)
