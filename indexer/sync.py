"""Bringing a collection in line with its sources (image folders or a product catalog): add new
files, re-encode changed ones, keep the vectors of moved ones, drop deleted ones, and record the
ones that cannot be used."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer.catalog_file import read_catalog
from indexer.scan import FoundFile, Unreadable, scan
from search.catalog import Failure, ImageRecord
from search.collection import Collection
from search.errors import ClipsearchError, ImageError, StorageError
from search.imaging import DEFAULT_MAX_PIXELS, decode_for_model
from search.sandbox import run_bounded
from search.vectors import VectorIndex

if TYPE_CHECKING:
    from indexer.pipeline import Batch, Loaded
    from search.model import Encoder

Key = tuple[str, str]  # (root, relative path)


def default_workers() -> int:
    """One decoding process per core: they spend much of their time waiting on reads and on the
    encoder's queue, so cores - 1 leaves a 2-core machine a third slower (benchmarks/)."""
    return max(1, min(16, os.cpu_count() or 2))


@dataclass
class Summary:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        encoded = self.added + self.updated
        data["seconds"] = round(self.seconds, 3)
        data["images_per_second"] = round(encoded / self.seconds, 2) if self.seconds else 0.0
        return data


@dataclass
class _Known:
    id: int
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class _Writes:
    """What one batch's transaction changes, applied to FAISS once it has committed."""

    added: list[tuple[int, np.ndarray]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    inserts: list[tuple[Key, dict[str, Any], np.ndarray]] = field(default_factory=list)


@dataclass
class Sources:
    """What one run brings the collection in line with: folders scanned, or a catalog read."""

    roots: list[Path]
    files: list[FoundFile]
    unreadable: list[Unreadable]
    attributes: dict[Key, dict[str, Any]] = field(default_factory=dict)

    @cached_property
    def present(self) -> set[Key]:
        """Computed once: the plan looks up every catalog row in it."""
        return {(f.root, f.path) for f in [*self.files, *self.unreadable]}


class Indexer:
    def __init__(
        self,
        collection: Collection,
        encoder: Encoder | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool | None = None,
        device: str = "auto",
    ) -> None:
        """Without `encoder`, the collection's model is loaded on `device` only once a file
        needs encoding: a run with nothing new never imports torch."""
        self.collection = collection
        self.catalog = collection.catalog
        self._encoder = encoder
        self.device = device
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.max_pixels = max_pixels
        self.progress = progress  # None: a bar only on a terminal

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self.collection.encoder(self.device)
        return self._encoder

    def run(self, folders: Sequence[Path]) -> Summary:
        """Index image folders recursively."""
        for folder in folders:
            if not folder.is_dir():
                raise ClipsearchError(f"not a folder: {folder}")
        with self.collection.writer():
            roots = [folder.resolve() for folder in folders]
            exclude = frozenset({self.collection.root.resolve()})
            found = [entry for root in roots for entry in scan(root, exclude)]
            files = [entry for entry in found if isinstance(entry, FoundFile)]
            unreadable = [entry for entry in found if isinstance(entry, Unreadable)]
            return _Run(self, Sources(roots, files, unreadable)).execute()

    def run_catalog(self, path: Path) -> Summary:
        """Index the images a CSV or JSONL catalog lists, with its columns as attributes."""
        with self.collection.writer():
            rows = read_catalog(path)
            attributes = {(str(rows.root), key): value for key, value in rows.attributes.items()}
            sources = Sources([rows.root], rows.files, rows.unreadable, attributes)
            return _Run(self, sources).execute()


class _Run:
    """One pass of the indexer; its state lives only as long as the pass."""

    def __init__(self, indexer: Indexer, sources: Sources) -> None:
        self.indexer = indexer
        self.catalog = indexer.catalog
        self.sources = sources
        self.summary = Summary()
        self.vectors: VectorIndex
        self.generation = 0
        self.root_ids: dict[str, int] = {}
        self.known: dict[Key, _Known] = {}
        self.failures: dict[Key, tuple[int, int]] = {}
        self.missing_by_sha: dict[str, list[Key]] = {}

    def execute(self) -> Summary:
        started = time.perf_counter()
        self.vectors, self.generation = self.indexer.collection.load_vectors()
        self.summary.scanned = len(self.sources.files) + len(self.sources.unreadable)
        todo = self._plan(self.sources.files)
        first_generation = self.generation
        try:
            if todo:
                self._encode(todo)
            self._record_unreadable(self.sources.unreadable)
            self._remove_missing(self.sources.present)
        except BaseException:
            # What was committed stays; its index is derived data, saved if the disk allows.
            with contextlib.suppress(StorageError):
                self._save_vectors(first_generation)
            raise
        self._save_vectors(first_generation)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _save_vectors(self, first_generation: int) -> None:
        collection = self.indexer.collection
        if (
            self.generation != first_generation
            or not collection.vectors_path(self.generation).exists()
        ):
            self.vectors = collection.save_vectors(self.vectors, self.generation)

    def _encode(self, todo: list[FoundFile]) -> None:
        from indexer.pipeline import load_batches

        encoder = self.indexer.encoder
        with tqdm(
            total=len(todo), unit="img", desc="indexing", disable=self._no_bar(), leave=False
        ) as bar:
            for batch in load_batches(
                todo,
                encoder.layout,
                self._catalog_hashes(),
                self.indexer.batch_size or (256 if encoder.device.type == "cuda" else 32),
                self.indexer.workers,
                self.indexer.max_pixels,
            ):
                self._write(batch)
                bar.update(len(batch.items))

    def _no_bar(self) -> bool | None:
        return None if self.indexer.progress is None else not self.indexer.progress

    def _plan(self, found: list[FoundFile]) -> list[FoundFile]:
        """Load what the catalog knows of these folders and keep only the files to read."""
        with self.catalog.transaction() as session:
            for folder in self.sources.roots:
                self.root_ids[str(folder)] = self.catalog.root_for(session, str(folder)).id
            roots = {root_id: path for path, root_id in self.root_ids.items()}
            rows = session.execute(
                select(
                    ImageRecord.id,
                    ImageRecord.root_id,
                    ImageRecord.path,
                    ImageRecord.size,
                    ImageRecord.mtime_ns,
                    ImageRecord.sha256,
                    ImageRecord.attributes,
                ).where(ImageRecord.root_id.in_(roots))
            )
            for row in rows:
                key = (roots[row.root_id], row.path)
                self.known[key] = _Known(row.id, row.size, row.mtime_ns, row.sha256)
                new_attributes = self.sources.attributes.get(key, {})
                if key in self.sources.present and (row.attributes or {}) != new_attributes:
                    # A catalog row can change its price without its picture changing.
                    session.execute(
                        update(ImageRecord)
                        .where(ImageRecord.id == row.id)
                        .values(attributes=new_attributes)
                    )
            self.failures = failures = {
                (roots[f.root_id], f.path): (f.size, f.mtime_ns)
                for f in session.scalars(select(Failure).where(Failure.root_id.in_(roots)))
            }
        present = self.sources.present
        for key, known in self.known.items():
            if key not in present:
                self.missing_by_sha.setdefault(known.sha256, []).append(key)
        todo = []
        for file in found:
            key = (file.root, file.path)
            known = self.known.get(key)
            if known and (known.size, known.mtime_ns) == (file.size, file.mtime_ns):
                self.summary.unchanged += 1
            elif not known and failures.get(key) == (file.size, file.mtime_ns):
                self.summary.failed += 1  # still the same broken file: not read again
            else:
                todo.append(file)
        return todo

    def _catalog_hashes(self) -> list[str]:
        with self.catalog.sessions() as session:
            return list(session.scalars(select(ImageRecord.sha256).distinct()))

    def _write(self, batch: Batch) -> None:
        """One transaction per batch: after a crash, every committed batch is complete and the
        next run starts where this one stopped."""
        from indexer.pipeline import Failed

        to_encode = batch.to_encode
        pixels = batch.pixels
        vectors = self.indexer.encoder.encode_pixels(pixels) if pixels is not None else []
        encoded = {id(item): vectors[i] for i, item in enumerate(to_encode)}
        writes = _Writes()
        with self.catalog.transaction() as session:
            for item in batch.items:
                if isinstance(item, Failed):
                    self._fail(session, item.file, item.reason, writes)
                    continue
                vector = encoded.get(id(item))
                if vector is None:
                    self._reuse(session, item, writes)
                else:
                    self._store(session, item, vector, writes)
            self._insert(session, writes)
            self.catalog.bump_generation(session)
            generation = self.catalog.generation(session)
        self.generation = generation
        self.vectors.remove(writes.dropped)
        if writes.added:
            ids, rows = zip(*writes.added, strict=True)
            self.vectors.add(np.array(ids), np.stack(rows))

    def _store(
        self,
        session: Session,
        item: Loaded,
        vector: np.ndarray,
        writes: _Writes,
        width: int | None = None,
        height: int | None = None,
        taken_at: datetime | None = None,
    ) -> None:
        """Update the file's row in place, so its id (and links to it) survive, or queue it for
        the batch's one bulk insert."""
        file = item.file
        key = (file.root, file.path)
        vector = np.asarray(vector, dtype=np.float32)
        fields = {
            "size": file.size,
            "mtime_ns": file.mtime_ns,
            "sha256": item.sha256,
            "width": width or item.width,
            "height": height or item.height,
            "ext": file.ext,
            "taken_at": taken_at or item.taken_at or _file_time(file),
            "embedding": vector.tobytes(),
            "attributes": self.sources.attributes.get(key, {}),
            "indexed_at": datetime.now(),
        }
        if key in self.failures:
            session.execute(
                delete(Failure).where(
                    Failure.root_id == self.root_ids[file.root], Failure.path == file.path
                )
            )
        known = self.known.get(key)
        record = session.get(ImageRecord, known.id) if known else None
        if record is None:
            fields.update(root_id=self.root_ids[file.root], path=file.path)
            writes.inserts.append((key, fields, vector))
            return
        for name, value in fields.items():
            setattr(record, name, value)
        writes.dropped.append(record.id)
        writes.added.append((record.id, vector))
        self.known[key] = _Known(record.id, file.size, file.mtime_ns, item.sha256)
        self.summary.updated += 1

    def _insert(self, session: Session, writes: _Writes) -> None:
        """One multi-row INSERT ... RETURNING for the batch's new files: a flush per row was
        most of the indexer's own time per image."""
        if not writes.inserts:
            return
        statement = insert(ImageRecord).returning(ImageRecord.id, sort_by_parameter_order=True)
        ids = session.scalars(statement, [fields for _, fields, _ in writes.inserts]).all()
        for image_id, (key, fields, vector) in zip(ids, writes.inserts, strict=True):
            self.known[key] = _Known(image_id, fields["size"], fields["mtime_ns"], fields["sha256"])
            writes.added.append((image_id, vector))
        self.summary.added += len(ids)

    def _reuse(self, session: Session, item: Loaded, writes: _Writes) -> None:
        """Content already in the catalog: the file was touched, moved, or is a copy."""
        file = item.file
        key = (file.root, file.path)
        known = self.known.get(key)
        if known and known.sha256 == item.sha256:
            record = session.get(ImageRecord, known.id)
            assert record is not None
            record.size, record.mtime_ns = file.size, file.mtime_ns
            self.known[key] = _Known(known.id, file.size, file.mtime_ns, item.sha256)
            self.summary.unchanged += 1
            return
        moved_from = self.missing_by_sha.get(item.sha256)
        if moved_from and not known:
            old_key = moved_from.pop()
            record = session.get(ImageRecord, self.known.pop(old_key).id)
            assert record is not None
            record.root_id, record.path = self.root_ids[file.root], file.path
            record.size, record.mtime_ns = file.size, file.mtime_ns
            record.attributes = self.sources.attributes.get(key, {})
            self.known[key] = _Known(record.id, file.size, file.mtime_ns, item.sha256)
            self.summary.moved += 1
            return
        source = session.scalars(
            select(ImageRecord).where(ImageRecord.sha256 == item.sha256).limit(1)
        ).first()
        if source is None:
            # The only row with this content was changed earlier in this run: encode here.
            self._encode_now(session, item, writes)
            return
        self._store(
            session,
            item,
            source.vector,
            writes,
            width=source.width,
            height=source.height,
            taken_at=source.taken_at,
        )

    def _encode_now(self, session: Session, item: Loaded, writes: _Writes) -> None:
        encoder = self.indexer.encoder
        try:
            data = item.file.absolute.read_bytes()
            decoded = run_bounded(decode_for_model, data, encoder.layout, self.indexer.max_pixels)
        except ImageError as exc:
            self._fail(session, item.file, str(exc), writes)
            return
        except OSError as exc:
            self._fail(session, item.file, f"unreadable: {exc.strerror}", writes)
            return
        vector = encoder.encode_pixels(decoded.pixels[np.newaxis])[0]
        item.width, item.height, item.taken_at = decoded.width, decoded.height, decoded.taken_at
        self._store(session, item, vector, writes)

    def _fail(self, session: Session, file: FoundFile, reason: str, writes: _Writes) -> None:
        """Record why; a file that broke since it was indexed leaves the index."""
        root_id = self.root_ids[file.root]
        key = (file.root, file.path)
        if known := self.known.pop(key, None):
            session.execute(delete(ImageRecord).where(ImageRecord.id == known.id))
            writes.dropped.append(known.id)
        failure = session.scalars(
            select(Failure).where(Failure.root_id == root_id, Failure.path == file.path)
        ).first()
        if failure is None:
            failure = Failure(root_id=root_id, path=file.path, size=0, mtime_ns=0, reason="")
            session.add(failure)
        failure.size, failure.mtime_ns, failure.reason = file.size, file.mtime_ns, reason
        failure.seen_at = datetime.now()
        self.summary.failed += 1

    def _record_unreadable(self, unreadable: list[Unreadable]) -> None:
        if not unreadable:
            return
        writes = _Writes()
        with self.catalog.transaction() as session:
            for entry in unreadable:
                self._fail(session, FoundFile(entry.root, entry.path, 0, 0), entry.reason, writes)
            self._bump_if_changed(session, writes.dropped)
        self.vectors.remove(writes.dropped)

    def _remove_missing(self, present: set[Key]) -> None:
        """Deleted files leave catalog and index; this runs last so moves are found first."""
        gone = [known.id for key, known in self.known.items() if key not in present]
        stale = [key for key in self.failures if key not in present]
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
        self.vectors.remove(gone)
        self.summary.removed = len(gone)

    def _bump_if_changed(self, session: Session, dropped: list[int]) -> None:
        """A new generation only when the set of vectors changed: a run that changes nothing
        writes no new index file."""
        if dropped:
            self.catalog.bump_generation(session)
            self.generation = self.catalog.generation(session)


def _file_time(file: FoundFile) -> datetime:
    return datetime.fromtimestamp(file.mtime_ns / 1e9)
