"""What one run has to do, decided from the catalog and the files found, without writing
anything: which files to read, which rows are unchanged, which may have moved, whose attributes
changed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Row, String, select, type_coerce
from sqlalchemy.orm import Session

from indexer.scan import FoundFile, Unreadable, outermost
from search import jsontext
from search.catalog import Failure, ImageRecord, Root

Key = tuple[str, str]  # (root, relative path)


def folder_roots(folders: Iterable[Path], recorded: Iterable[Path]) -> list[Path]:
    """The folders a run scans for `folders`: a folder inside one the collection holds already
    widens to that one, and then each is scanned once and none inside another. A file is one
    row under one root; `index X/sub` after `index X` stored sub's files a second time."""
    recorded = outermost(recorded)
    return outermost(holder(folder, recorded) or folder for folder in folders)


def holder(folder: Path, roots: Iterable[Path]) -> Path | None:
    """The one of `roots` (none inside another) that `folder` is, or is inside."""
    return next((root for root in roots if folder.is_relative_to(root)), None)


@dataclass
class Sources:
    """What one run brings the collection in line with: folders scanned, or a catalog read."""

    roots: list[Path]
    files: list[FoundFile]
    unreadable: list[Unreadable]
    attributes: dict[Key, str] = field(default_factory=dict)  # a catalog's rows, as JSON text
    ignore_rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # by root: to record
    # Folder runs: a recorded folder inside a scanned one joins it (catalogs list their images).
    absorbs: bool = False
    held: list[FoundFile] = field(default_factory=list)  # present, but left for a later run
    catalog: str | None = None  # the catalog file's name, in its root, for a catalog run

    def hold_newer(self, mtime_ns: int) -> None:
        """Hold back the files modified at or after `mtime_ns`."""
        self.held = [f for f in self.files if f.mtime_ns >= mtime_ns]
        self.files = [f for f in self.files if f.mtime_ns < mtime_ns]

    @cached_property
    def present(self) -> set[Key]:
        """Computed once: the plan looks up every catalog row in it."""
        return {(f.root, f.path) for f in [*self.files, *self.unreadable, *self.held]}


@dataclass(slots=True)
class Known:
    """A catalog row, as far as deciding whether its file changed needs it."""

    id: int
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Place:
    """Where a recorded root's rows belong in this run: under `root`, their paths after
    `prefix`. A scanned root is its own place; a folder inside one joins it."""

    root: str
    prefix: str = ""


@dataclass
class Plan:
    todo: list[FoundFile]  # new or changed files: to read, hash, and encode unless seen
    known: dict[Key, Known]  # the catalog's rows under these roots
    failures: dict[Key, tuple[int, int]]  # recorded failures: (size, mtime_ns) when they failed
    missing_by_sha: dict[str, list[Key]]  # rows whose files are gone: a file found may be one
    new_attributes: dict[int, dict[str, Any]]  # row id -> the catalog's changed columns
    absorbed: dict[int, Place] = field(default_factory=dict)  # root id -> the root it joins
    duplicates: list[int] = field(default_factory=list)  # rows of a file another row holds
    unchanged: int = 0
    still_failed: int = 0  # the same broken file as last time: not read again


def make_plan(session: Session, sources: Sources) -> Plan:
    places = _places(session, sources)
    known, duplicates, new_attributes = _known_rows(session, places, sources)
    failures = {
        _key(places[f.root_id], f.path): (f.size, f.mtime_ns)
        for f in session.scalars(select(Failure).where(Failure.root_id.in_(places)))
    }
    absorbed = {id_: place for id_, place in places.items() if place.prefix}
    plan = Plan([], known, failures, {}, new_attributes, absorbed, duplicates)
    for key, known in plan.known.items():
        if key not in sources.present:
            plan.missing_by_sha.setdefault(known.sha256, []).append(key)
    for file in sources.files:
        key = (file.root, file.path)
        known = plan.known.get(key)
        if known and (known.size, known.mtime_ns) == (file.size, file.mtime_ns):
            plan.unchanged += 1
        elif not known and plan.failures.get(key) == (file.size, file.mtime_ns):
            plan.still_failed += 1
        else:
            plan.todo.append(file)
    return plan


def _places(session: Session, sources: Sources) -> dict[int, Place]:
    """The recorded roots this run covers, by id: the scanned ones, and for a folder run the
    recorded folders inside them (indexed on their own by an earlier run)."""
    scanned = [str(path) for path in sources.roots]
    places = {}
    for root in session.scalars(select(Root)):
        if root.path in scanned:
            places[root.id] = Place(root.path)
        elif sources.absorbs and (outer := holder(Path(root.path), sources.roots)):
            places[root.id] = Place(str(outer), Path(root.path).relative_to(outer).as_posix() + "/")
    return places


def _key(place: Place, path: str) -> Key:
    return place.root, place.prefix + path


def _known_rows(
    session: Session, places: dict[int, Place], sources: Sources
) -> tuple[dict[Key, Known], list[int], dict[int, dict[str, Any]]]:
    """The rows under these roots; the rows of a file that another row holds already (an
    earlier release indexed a folder inside another one as a second root), which go; and the
    new attributes of those whose catalog columns changed (a price can change while the
    picture stays). A scanned root's own row is the one kept, as it keeps its path."""
    known, duplicates, new_attributes = {}, [], {}
    for id_, root_id, path, size, mtime_ns, sha256, stored in _rows(session, places):
        place = places[root_id]
        key = _key(place, path)
        if (held := known.get(key)) is not None:
            if place.prefix:
                duplicates.append(id_)
                continue
            duplicates.append(held.id)
            new_attributes.pop(held.id, None)
        known[key] = Known(id_, size, mtime_ns, sha256)
        attributes = sources.attributes.get(key, "{}")
        if key in sources.present and _changed(stored, attributes):
            new_attributes[id_] = jsontext.loads(attributes)
    return known, duplicates, new_attributes


def _rows(session: Session, places: dict[int, Place]) -> Iterator[Row[Any]]:
    """The catalog's rows under these roots, streamed, their attributes as the stored text:
    a shop re-runs its million-product catalog nightly, and buffering the rows with their
    attributes decoded took 0.9 GB and most of the plan's time."""
    query = select(
        ImageRecord.id,
        ImageRecord.root_id,
        ImageRecord.path,
        ImageRecord.size,
        ImageRecord.mtime_ns,
        ImageRecord.sha256,
        type_coerce(ImageRecord.attributes, String),
    ).where(ImageRecord.root_id.in_(places))
    yield from session.connection().execute(query, execution_options={"yield_per": 10_000})


def _changed(stored: str | None, attributes: str) -> bool:
    """Whether a row's stored attributes differ from the catalog's: the text, both written by
    jsontext, is the same, and otherwise (an older release's spelling) the values tell."""
    if stored == attributes:
        return False
    return (jsontext.loads(stored or "null") or {}) != jsontext.loads(attributes)
