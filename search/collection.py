"""A collection on disk: one data directory holding the manifest, the catalog, the vectors and
the thumbnail cache."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text

from search.catalog import NEXT_EMBEDDINGS, SWITCHED, Catalog, Failure, Meta, Root
from search.errors import CollectionError, StorageError
from search.halfvectors import HALF_VECTORS, HalfVectors
from search.migrations import SCHEMA_VERSION
from search.spec import ModelSpec
from search.storage import writing
from search.tags import Vocabulary
from search.vectors import (
    COMPRESSED_TRAINING_PER_LIST,
    VectorIndex,
    compressed_lists,
    compresses,
)

if TYPE_CHECKING:
    from search.model import Encoder

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
THUMBNAILS = "thumbs"
WRITER_LOCK = "index.lock"
NEXT_MANIFEST = "next-model.json"  # the model a rebuild is moving the collection to


def load_encoder(spec: ModelSpec, device: str = "auto") -> Encoder:
    """`spec`'s model, its files checked against `spec` on a thread while torch and open_clip
    import and the model loads (hashing ViT-B-32's 600 MB checkpoint takes 0.4 s). A changed
    file is still the error given, whatever the load made of it."""
    with ThreadPoolExecutor(1, thread_name_prefix="clipsearch-verify") as pool:
        verified = pool.submit(spec.verify_files)
        try:
            from search.model import Encoder  # torch and open_clip: only when a model is needed

            encoder = Encoder(spec, device)
        finally:
            verified.result()
    return encoder


def default_data_dir() -> Path:
    """$CLIPSEARCH_DATA_DIR, else $XDG_DATA_HOME/clipsearch, else ~/.local/share/clipsearch."""
    if explicit := os.environ.get("CLIPSEARCH_DATA_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "clipsearch"


class Collection:
    def __init__(self, root: Path, spec: ModelSpec) -> None:
        self.root = root
        self.spec = spec
        # A read-only mount, a replica, another user's collection: searched, never written.
        self.read_only = root.exists() and not os.access(root, os.W_OK)
        self.catalog = Catalog(root / CATALOG, read_only=self.read_only)
        self.thumbnails = root / THUMBNAILS
        self._seen = 0  # the newest saved generation a read-only collection has looked at

    @classmethod
    def open(cls, data_dir: Path) -> Collection:
        manifest = _read_manifest(data_dir)
        if manifest is None:
            raise CollectionError(
                f"no collection in {data_dir}: run 'clipsearch index FOLDER' first, "
                "or point --data-dir (or $CLIPSEARCH_DATA_DIR) at one"
            )
        collection = cls(data_dir, ModelSpec.from_json(manifest["model"]))
        collection._upgrade()  # a damaged catalog says so now, in one line
        collection._finish_switch()
        return collection

    # Changing model in place (indexer/rebuild.py): the next model's identity waits in
    # NEXT_MANIFEST and its vectors in the catalog's next_embeddings table; one transaction
    # switches the vectors, then the manifest is replaced.

    def next_spec(self) -> ModelSpec | None:
        """The model a rebuild under way is moving the collection to."""
        manifest = _read_manifest(self.root, NEXT_MANIFEST)
        return None if manifest is None else ModelSpec.from_json(manifest["model"])

    def current_spec(self) -> ModelSpec:
        """The model as the manifest says now: servers ask it when the generation moves."""
        return self.recorded_spec(self.root) or self.spec

    @staticmethod
    def recorded_spec(data_dir: Path) -> ModelSpec | None:
        """The model of the collection in `data_dir`, if there is one, read without opening it."""
        manifest = _read_manifest(data_dir)
        return None if manifest is None else ModelSpec.from_json(manifest["model"])

    def begin_rebuild(self, spec: ModelSpec) -> None:
        """Make room for `spec`'s vectors, keeping those of an interrupted rebuild to the same
        model (it resumes) and dropping those of a rebuild to another."""
        pending = self.next_spec()
        with self.catalog.transaction() as session:
            if pending is not None and not pending.same_model(spec):
                session.execute(text("DROP TABLE IF EXISTS next_embeddings"))
            session.execute(text(NEXT_EMBEDDINGS))
        _save_manifest(self.root, spec, NEXT_MANIFEST)

    def switch_model(self) -> None:
        with self.catalog.transaction() as session:
            Catalog.switch_embeddings(session)
        self._adopt_next()

    def _finish_switch(self) -> None:
        """A switch whose catalog part committed before a crash gets its manifest now, from
        whoever opens the collection first and can take the writer lock."""
        if self.read_only or self.next_spec() is None:
            return
        with contextlib.suppress(CollectionError), self.writer():
            with self.catalog.sessions() as session:
                switched = session.get(Meta, SWITCHED) is not None
            if switched:
                self._adopt_next()

    def _adopt_next(self) -> None:
        os.replace(self.root / NEXT_MANIFEST, self.root / MANIFEST)
        with self.catalog.transaction() as session:
            session.execute(delete(Meta).where(Meta.key == SWITCHED))
        self.spec = self.current_spec()
        log.info("%s now uses %s", self.root, self.spec.describe())

    def _upgrade(self) -> None:
        """Bring an older catalog to this release's schema, in place and under the writer
        lock; the manifest follows, so an older release refuses it in one line of its own."""
        version = self.catalog.schema_version()
        if version > SCHEMA_VERSION:
            raise CollectionError(_newer(self.root, version))
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise CollectionError(
                f"{self.root} holds a collection of schema version {version}, from an older "
                f"clipsearch; this one reads version {SCHEMA_VERSION}. Open it once where it "
                "can be written (any clipsearch command) to upgrade it in place"
            )
        with self.writer():
            self.catalog.upgrade()
            _save_manifest(self.root, self.spec)
        log.info("upgraded %s from schema %d to %d", self.root, version, SCHEMA_VERSION)

    @classmethod
    def create_or_open(cls, data_dir: Path, spec: ModelSpec | None) -> Collection:
        """Open the collection for indexing; a new one is made with `spec` (or the default)."""
        if _read_manifest(data_dir) is not None:
            collection = cls.open(data_dir)
            if spec is None or spec.same_model(collection.spec):
                return collection
            if collection.catalog.counts()["images"]:
                raise CollectionError(
                    f"the collection in {data_dir} was built with {collection.spec.describe()}; "
                    f"it will not mix in vectors of {spec.describe()}. Add --rebuild to move it "
                    "to the new model, index into another --data-dir, or leave out "
                    "--model/--pretrained to use the collection's model"
                )
            # Nothing encoded yet (a first run that failed to get its weights): free to change.
            for stale in [*data_dir.glob("vectors-*.faiss"), data_dir / HALF_VECTORS]:
                stale.unlink(missing_ok=True)
            log.info("the empty collection in %s now uses %s", data_dir, spec.describe())
            return cls._write_manifest(data_dir, spec)
        spec = spec or ModelSpec.from_args(None, None)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CollectionError(f"cannot create {data_dir}: {exc.strerror}") from exc
        Catalog(data_dir / CATALOG).create_schema()
        return cls._write_manifest(data_dir, spec)

    @classmethod
    def _write_manifest(cls, data_dir: Path, spec: ModelSpec) -> Collection:
        _save_manifest(data_dir, spec)
        return cls(data_dir, spec)

    def stats(self, vectors: VectorIndex | None = None) -> dict[str, Any]:
        """What `clipsearch stats` and /api/stats show; needs no model, so it works offline.
        Without the loaded `vectors`, it maps the saved index rather than load or rebuild it."""
        counts = self.catalog.counts()
        path = self.vectors_path(self.catalog.generation())
        if vectors is None and path.exists():
            vectors = self._readable(path, VectorIndex.mapped)
        index = (
            {"type": vectors.kind, "vectors": len(vectors)}
            if vectors is not None
            else {"type": "not saved yet (the next search builds it)", "vectors": counts["images"]}
        )
        with self.catalog.sessions() as session:
            failures = [
                {"path": f.path, "root": f.root.path, "reason": f.reason}
                for f in session.scalars(select(Failure).order_by(Failure.root_id, Failure.path))
            ]
            roots = [
                {"path": root.path, **root.ignore_rules, "catalog": root.catalog}
                for root in session.scalars(select(Root).order_by(Root.path))
            ]
            vocabulary = Vocabulary(Catalog.tag_names(session))
        return {
            "images": counts["images"],
            "failed": counts["failed"],
            "model": self.spec.name,
            "multilingual": self.spec.multilingual,
            "embed_dim": self.spec.embed_dim,
            "index": index,
            "failures": failures,
            "roots": roots,
            "tags": {
                "vocabulary": len(vocabulary.names),
                "default": vocabulary == Vocabulary.default(),
                "untagged": counts["untagged"],
            },
        }

    def encoder(self, device: str = "auto") -> Encoder:
        return load_encoder(self.spec, device)

    # The vectors: a FAISS file per catalog generation, so a file always says which catalog
    # state it reflects.

    def vectors_path(self, generation: int) -> Path:
        return self.root / f"vectors-{generation}.faiss"

    def published(self) -> int:
        """The generation to answer from: the catalog's. A read-only collection's catalog is
        opened immutable when no writer's WAL is in sight, and SQLite would then never see a
        new generation: there the newest saved index is the signal, and the catalog is opened
        afresh to read the rows it indexes."""
        if not self.read_only:
            return self.catalog.generation()
        names = (path.stem.removeprefix("vectors-") for path in self.root.glob("vectors-*.faiss"))
        newest = max((int(name) for name in names if name.isdigit()), default=0)
        if newest != self._seen:
            self.catalog.engine.dispose()
            self.catalog, self._seen = Catalog(self.root / CATALOG, read_only=True), newest
        return newest or self.catalog.generation()

    def load_vectors(self, generation: int | None = None) -> tuple[VectorIndex, int]:
        """The index matching the catalog, rebuilt from the catalog's embeddings when the saved
        one is missing or stale (after a crash, or while an indexer runs). An indexer asks for
        the `generation` its run began at: the catalog may have moved on without its vectors."""
        generation = self.published() if generation is None else generation
        path = self.vectors_path(generation)
        if path.exists() and (index := self._readable(path, self._load)):
            return index, generation
        index, generation = self._built()
        if not self.read_only and not self.writer_active():
            with contextlib.suppress(StorageError):  # derived data: next time, then
                index = self.save_vectors(index, generation)
        return index, generation

    def _load(self, path: Path) -> VectorIndex:
        return VectorIndex.load(path, self.half_vectors)

    @property
    def half_vectors(self) -> HalfVectors:
        return HalfVectors(self.root / HALF_VECTORS, self.spec.embed_dim)

    def _built(self) -> tuple[VectorIndex, int]:
        """An index of the type the catalog's size calls for, built from one snapshot of it; a
        compressed one streams the catalog through memory and rewrites the full vectors."""
        with self.catalog.sessions() as session:
            generation = self.catalog.generation(session)
            count = self.catalog.counts(session)["images"]
            if not compresses(count):
                _, ids, vectors = self.catalog.snapshot_vectors(session)
                return VectorIndex.build(self.spec.embed_dim, ids, vectors), generation
            log.info("building a compressed index of %d vectors", count)
            wanted = COMPRESSED_TRAINING_PER_LIST * compressed_lists(count)
            sample = self.catalog.sample_vectors(session, wanted)
            text = self.catalog.text_direction(session, self.spec.identity, self.spec.embed_dim)
            chunks = self.catalog.vector_chunks(session, 50_000)
            index = VectorIndex.compressed(sample, count, chunks, self.half_vectors, text)
            return index, generation

    def _readable(self, path: Path, read: Callable[[Path], VectorIndex]) -> VectorIndex | None:
        """A saved index is derived data: one that cannot be read is rebuilt, not an error."""
        try:
            index = read(path)
        except (RuntimeError, OSError, MemoryError) as exc:
            log.warning("%s is unreadable (%s); rebuilding it from the catalog", path, exc)
            return None
        if index.dim != self.spec.embed_dim:
            log.warning("%s holds %d-d vectors; rebuilding it from the catalog", path, index.dim)
            return None
        return index

    def save_vectors(self, index: VectorIndex, generation: int) -> VectorIndex:
        """Save, first rebuilding the index if the collection has outgrown its type; returns
        the index saved."""
        if index.wants_rebuild():
            log.info("rebuilding the vector index for %d vectors", len(index))
            index, _ = self._built()
        index.save(self.vectors_path(generation))
        for old in self.root.glob("vectors-*.faiss"):
            if old != self.vectors_path(generation):
                old.unlink(missing_ok=True)
        return index

    def carry_vectors(self, generation: int, now: int) -> None:
        """The index saved for `generation` becomes `now`'s, as the rows changed but not their
        vectors (a catalog's prices, tags): renamed, not read and written again, which at a
        million images is 2 GB of memory and seconds. Built if neither is saved."""
        renaming = writing(f"renaming the vector index to {self.vectors_path(now)}")
        with renaming, contextlib.suppress(FileNotFoundError):
            os.replace(self.vectors_path(generation), self.vectors_path(now))
        if not self.vectors_path(now).exists():
            self.save_vectors(*self.load_vectors())

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Only one indexer may write a collection at a time."""
        with writing(f"taking the writer lock of {self.root}"):
            handle = open(self.root / WRITER_LOCK, "a")  # noqa: SIM115 (closed below)
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise CollectionError(
                    f"another 'clipsearch index' is writing to {self.root}; wait for it to finish"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def writer_active(self) -> bool:
        try:
            with self.writer():
                return False
        except CollectionError:
            return True
        except StorageError:  # a read-only collection: nobody can be writing it
            return False


def _read_manifest(data_dir: Path, name: str = MANIFEST) -> dict[str, Any] | None:
    path = data_dir / name
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CollectionError(f"cannot read {path}: {exc}") from exc
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise CollectionError(f"{path} names no schema version")
    if version > SCHEMA_VERSION:
        raise CollectionError(_newer(data_dir, version))
    return manifest


def _newer(data_dir: Path, version: int) -> str:
    return (
        f"{data_dir} holds a collection of schema version {version}, from a newer clipsearch; "
        f"this one reads up to version {SCHEMA_VERSION}: upgrade clipsearch to open it"
    )


def _save_manifest(data_dir: Path, spec: ModelSpec, name: str = MANIFEST) -> None:
    _write_json_atomic(data_dir / name, {"schema_version": SCHEMA_VERSION, "model": spec.to_json()})


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(f"writing {path}", tmp):
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
