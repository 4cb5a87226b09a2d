"""The SQLite catalog: every indexed image, its embedding and metadata, and every file that failed.

The catalog is the source of truth. The FAISS index is derived from the embeddings stored here
and is tagged with the catalog's generation, which every write transaction that changes the set
of vectors increments; a mismatch after a crash is repaired by rebuilding from here.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    LargeBinary,
    Row,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from search import jsontext
from search.errors import ClipsearchError, CollectionError, StorageError
from search.migrations import SCHEMA_VERSION, upgrade


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON}


class Root(Base):
    """An indexed folder; image paths are stored relative to it so a collection can move."""

    __tablename__ = "roots"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(unique=True)
    # What its last run left out: {"exclude": [globs], "ignore_files": {path: [patterns]}}.
    ignore_rules: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # The catalog file (in this folder) that lists its images; None for a folder of photos.
    catalog: Mapped[str | None] = mapped_column(default=None)


# The images whose tags are due, as ix_images_untagged says it, so that SQLite reads that index.
UNTAGGED = text("tagged = 0")


class ImageRecord(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("root_id", "path"),
        Index("ix_images_sha256", "sha256"),
        Index("ix_images_taken_at", "taken_at"),
        # The images whose tags are due (indexer/tagging.py): a run that added ten images to a
        # million finds them without reading the table.
        Index("ix_images_untagged", "id", sqlite_where=UNTAGGED),
        # AUTOINCREMENT: an id is never handed out twice, so a stale link never shows
        # another image.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    path: Mapped[str]  # POSIX, relative to the root
    size: Mapped[int]
    mtime_ns: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    ext: Mapped[str] = mapped_column(String(16))
    taken_at: Mapped[datetime]  # EXIF capture time, else file time
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    indexed_at: Mapped[datetime] = mapped_column(default=datetime.now)
    # Whether `tags` were computed from the current vector and vocabulary.
    tagged: Mapped[bool] = mapped_column(default=False, server_default="0")

    root: Mapped[Root] = relationship(lazy="joined")
    # The database deletes these with their image (ON DELETE CASCADE), also on bulk deletes.
    stored: Mapped[StoredVector] = relationship(lazy="joined", passive_deletes=True)
    tags: Mapped[list[ImageTag]] = relationship(
        lazy="selectin", passive_deletes=True, order_by="ImageTag.score.desc()"
    )

    @property
    def vector(self) -> np.ndarray:
        return self.stored.vector

    @property
    def file_path(self) -> Path:
        return Path(self.root.path, self.path)


class StoredVector(Base):
    """An image's embedding, in a table of its own so that scanning the images table for a
    filter does not read 2 KB of vector per row; looked up by id when re-ranking."""

    __tablename__ = "embeddings"

    id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column("vector", LargeBinary)  # float32, L2-normalised

    @property
    def vector(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.float32)


class Tag(Base):
    """A word of the collection's tag vocabulary; ids follow the vocabulary's order."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)


class ImageTag(Base):
    """A tag an image clears the margin for, with the model's probability (search/tags.py)."""

    __tablename__ = "image_tags"
    __table_args__ = (Index("ix_image_tags_tag", "tag_id"),)

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    score: Mapped[float]

    tag: Mapped[Tag] = relationship(lazy="joined")


class TagPrompts(Base):
    """A vocabulary as one model embedded it (search/tags.Prompts), so that each vocabulary is
    embedded once per model and tagging new images needs no text model."""

    __tablename__ = "tag_prompts"

    model: Mapped[str] = mapped_column(primary_key=True)  # ModelSpec.identity
    vocabulary: Mapped[str] = mapped_column(primary_key=True)  # Vocabulary.digest
    scale: Mapped[float]
    vectors: Mapped[bytes] = mapped_column(LargeBinary)


class Failure(Base):
    """A file the indexer could not use, with the reason `clipsearch stats` shows."""

    __tablename__ = "failures"
    __table_args__ = (UniqueConstraint("root_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    path: Mapped[str]
    size: Mapped[int]
    mtime_ns: Mapped[int]
    reason: Mapped[str]
    seen_at: Mapped[datetime] = mapped_column(default=datetime.now)

    root: Mapped[Root] = relationship(lazy="joined")


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[int]


GENERATION = "generation"
SWITCHED = "model_switched"  # set by the switch to the next model until its manifest is in place
# The next model's embeddings while a rebuild runs: the embeddings table's own layout, so that
# the switch only renames it.
NEXT_EMBEDDINGS = (
    "CREATE TABLE IF NOT EXISTS next_embeddings (id INTEGER NOT NULL, vector BLOB NOT NULL, "
    "PRIMARY KEY (id), FOREIGN KEY(id) REFERENCES images (id) ON DELETE CASCADE)"
)
VOCABULARY = "tag_vocabulary"  # set once the tags table holds the vocabulary in force
SCHEMA = "schema_version"  # absent in the schema-1 catalogs written before migrations existed


class Catalog:
    """One SQLite file and the session factory every reader and writer uses."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        url = _read_only_url(path) if read_only else f"sqlite:///{path}"
        self.engine = create_engine(
            url, connect_args={"timeout": 30}, json_serializer=jsontext.dumps
        )
        # Connections are closed with the catalog, and at exit: SQLite moves the write-ahead
        # log into the catalog file when the last one closes.
        weakref.finalize(self, self.engine.dispose)
        if not read_only:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def sessions(self) -> Iterator[Session]:
        """A session; SQLite's failures (a damaged file, a full disk) leave as one clear line."""
        with self._clear_errors(), self._sessions() as session:
            yield session

    @contextlib.contextmanager
    def _clear_errors(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as exc:
            raise self._clear(exc) or exc from None

    def _clear(self, exc: DatabaseError) -> ClipsearchError | None:
        text = str(exc.orig)
        if "full" in text:
            return StorageError(f"no space left on device while writing {self.path}")
        if "readonly" in text:
            return StorageError(f"cannot write {self.path}: it is read-only")
        if "malformed" in text or "not a database" in text:
            return CollectionError(
                f"the catalog {self.path} is damaged ({text}): restore it from a backup, "
                "or index into a new --data-dir"
            )
        if isinstance(exc, OperationalError) and "locked" not in text:
            return CollectionError(f"cannot use the catalog {self.path}: {text}")
        return None

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.transaction() as session:
            if session.get(Meta, GENERATION) is None:
                session.add_all(
                    [Meta(key=GENERATION, value=0), Meta(key=SCHEMA, value=SCHEMA_VERSION)]
                )

    def schema_version(self, session: Session | None = None) -> int:
        with self._within(session) as session:
            return session.scalar(select(Meta.value).where(Meta.key == SCHEMA)) or 1

    def upgrade(self) -> int:
        """Bring an older catalog to SCHEMA_VERSION in one transaction (the caller holds the
        writer lock); returns the version it had."""
        with self.transaction() as session:
            version = self.schema_version(session)
            upgrade(session.connection(), version)
            session.merge(Meta(key=SCHEMA, value=SCHEMA_VERSION))
        return version

    def _within(self, session: Session | None) -> contextlib.AbstractContextManager[Session]:
        """The caller's session (its transaction, its snapshot), or a session of its own."""
        return contextlib.nullcontext(session) if session else self.sessions()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def generation(self, session: Session | None = None) -> int:
        statement = select(Meta.value).where(Meta.key == GENERATION)
        if session is not None:
            return session.scalar(statement) or 0
        # Asked before every search: a bare connection costs a quarter of an ORM session.
        with self._clear_errors(), self.engine.connect() as connection:
            return connection.scalar(statement) or 0

    @staticmethod
    def bump_generation(session: Session) -> None:
        session.execute(update(Meta).where(Meta.key == GENERATION).values(value=Meta.value + 1))

    @staticmethod
    def next_image_ids(session: Session, count: int) -> range:
        """The ids the next `count` new images take, for the writer (which holds the writer
        lock) to insert with: ids given by the database one row at a time made every row its
        own INSERT ... RETURNING. Counted from AUTOINCREMENT's record of the highest id ever
        used, so a deleted image's id is still never handed out again."""
        last = session.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = 'images'"))
        first = (last or 0) + 1
        return range(first, first + count)

    @staticmethod
    def switch_embeddings(session: Session) -> None:
        """The next model's embeddings become the collection's, in the caller's transaction;
        an image that has none (its file could not be read again) leaves the collection."""
        for statement in (
            "DELETE FROM images WHERE id NOT IN (SELECT id FROM next_embeddings)",
            "DROP TABLE embeddings",
            "ALTER TABLE next_embeddings RENAME TO embeddings",
            "UPDATE images SET tagged = 0",  # the old tags stay shown until the new model's come
        ):
            session.execute(text(statement))
        session.merge(Meta(key=SWITCHED, value=1))
        Catalog.bump_generation(session)

    def root_for(self, session: Session, path: str) -> Root:
        root = session.scalar(select(Root).where(Root.path == path))
        if root is None:
            root = Root(path=path)
            session.add(root)
            session.flush()
        return root

    def snapshot_vectors(
        self, session: Session | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, ids, vectors) read in one transaction, for rebuilding the FAISS index."""
        with self._within(session) as session:
            generation = self.generation(session)
            rows = session.execute(select(StoredVector.id, StoredVector.data)).all()
        return generation, *unpacked(rows)

    @staticmethod
    def vector_chunks(
        session: Session, size: int, after: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (ids, vectors) of ids above `after` in id order, `size` rows at a time: the
        collection streamed through memory by a keyset scan, within the session's one read
        transaction."""
        last = after
        while True:
            rows = session.execute(
                select(StoredVector.id, StoredVector.data)
                .where(StoredVector.id > last)
                .order_by(StoredVector.id)
                .limit(size)
            ).all()
            if not rows:
                return
            last = rows[-1].id
            yield unpacked(rows)

    @staticmethod
    def sample_vectors(session: Session, count: int, seed: int = 0) -> np.ndarray:
        """About `count` vectors drawn at random by id (ids are dense: autoincrement)."""
        top = session.scalar(select(func.max(StoredVector.id))) or 0
        wanted = np.random.default_rng(seed).permutation(top)[:count] + 1
        sample, filled = np.empty((0, 0), dtype=np.float32), 0
        for start in range(0, len(wanted), 10_000):  # into one array: no second copy (1 GB)
            query = select(StoredVector.id, StoredVector.data).where(
                StoredVector.id.in_(wanted[start : start + 10_000].tolist())
            )
            rows = unpacked(session.execute(query).all())[1]
            if not len(rows):  # every id of this part deleted
                continue
            if not filled:
                sample = np.empty((len(wanted), rows.shape[1]), dtype=np.float32)
            sample[filled : filled + len(rows)] = rows
            filled += len(rows)
        return sample[:filled]

    def counts(self, session: Session | None = None) -> dict[str, int]:
        with self._within(session) as session:
            return {
                "images": session.scalar(select(func.count(ImageRecord.id))) or 0,
                "failed": session.scalar(select(func.count(Failure.id))) or 0,
                "roots": session.scalar(select(func.count(Root.id))) or 0,
                "untagged": session.scalar(select(func.count(ImageRecord.id)).where(UNTAGGED)) or 0,
            }

    def file_paths(self, ids: Sequence[int]) -> dict[int, Path]:
        """Where the images `ids` are on disk (a server's results name them by id)."""
        query = (
            select(ImageRecord.id, Root.path, ImageRecord.path)
            .join(Root)
            .where(ImageRecord.id.in_(ids))
        )
        with self.sessions() as session:
            return {id_: Path(root, path) for id_, root, path in session.execute(query)}

    @staticmethod
    def text_direction(session: Session, model: str, dim: int) -> np.ndarray | None:
        """The mean of the texts `model` embedded for the tags (every vocabulary's prompts), a
        unit vector: the direction all text queries share, which a compressed index's hub list
        is drawn along (search/vectors.py). None before tagging has embedded any."""
        rows = session.scalars(select(TagPrompts.vectors).where(TagPrompts.model == model))
        texts = [np.frombuffer(row, dtype=np.float32).reshape(-1, dim) for row in rows]
        if not texts:
            return None
        mean = np.concatenate(texts).mean(axis=0)
        return mean / np.linalg.norm(mean)

    @staticmethod
    def tag_names(session: Session) -> tuple[str, ...]:
        """The tag vocabulary in force, in its order."""
        return tuple(session.scalars(select(Tag.name).order_by(Tag.id)))


def unpacked(rows: Sequence[Row[tuple[int, bytes]]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of rows of (id, data) read from the embeddings table."""
    ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(row.data for row in rows), dtype=np.float32)
    return ids, vectors.reshape(len(rows), -1) if rows else vectors


def _read_only_url(path: Path) -> str:
    """A catalog on a read-only directory: no WAL side files can be made there, so it is opened
    immutable (nobody can be writing it), unless a WAL left by a writer must still be read."""
    wal = path.with_name(path.name + "-wal")
    immutable = "" if wal.exists() and wal.stat().st_size else "&immutable=1"
    return f"sqlite:///file:{quote(str(path))}?mode=ro{immutable}&uri=true"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A new catalog only: a 2 KB embedding row fits once in a 4 KB page (half of it wasted)
    # and seven times in 16 KB.
    cursor.execute("PRAGMA page_size=16384")
    # WAL lets a running server keep reading while the indexer writes; NORMAL sync is still
    # atomic per transaction, which is what crash safety needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
