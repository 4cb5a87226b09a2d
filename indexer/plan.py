"""What one run has to do, decided from the catalog and the files found, without writing
anything: which files to read, which rows are unchanged, which may have moved, whose attributes
changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.scan import FoundFile, Unreadable
from search.catalog import Failure, ImageRecord, Root

Key = tuple[str, str]  # (root, relative path)


@dataclass
class Sources:
    """What one run brings the collection in line with: folders scanned, or a catalog read."""

    roots: list[Path]
    files: list[FoundFile]
    unreadable: list[Unreadable]
    attributes: dict[Key, dict[str, Any]] = field(default_factory=dict)
    ignore_rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # by root: to record
    held: list[FoundFile] = field(default_factory=list)  # present, but left for a later run

    def hold_newer(self, mtime_ns: int) -> None:
        """Hold back the files modified at or after `mtime_ns`."""
        self.held = [f for f in self.files if f.mtime_ns >= mtime_ns]
        self.files = [f for f in self.files if f.mtime_ns < mtime_ns]

    @cached_property
    def present(self) -> set[Key]:
        """Computed once: the plan looks up every catalog row in it."""
        return {(f.root, f.path) for f in [*self.files, *self.unreadable, *self.held]}


@dataclass
class Known:
    """A catalog row, as far as deciding whether its file changed needs it."""

    id: int
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Plan:
    todo: list[FoundFile]  # new or changed files: to read, hash, and encode unless seen
    known: dict[Key, Known]  # the catalog's rows under these roots
    failures: dict[Key, tuple[int, int]]  # recorded failures: (size, mtime_ns) when they failed
    missing_by_sha: dict[str, list[Key]]  # rows whose files are gone: a file found may be one
    new_attributes: dict[int, dict[str, Any]]  # row id -> the catalog's changed columns
    unchanged: int = 0
    still_failed: int = 0  # the same broken file as last time: not read again


def make_plan(session: Session, sources: Sources) -> Plan:
    roots = {
        root.id: root.path
        for root in session.scalars(
            select(Root).where(Root.path.in_([str(path) for path in sources.roots]))
        )
    }
    known, new_attributes = _known_rows(session, roots, sources)
    failures = {
        (roots[f.root_id], f.path): (f.size, f.mtime_ns)
        for f in session.scalars(select(Failure).where(Failure.root_id.in_(roots)))
    }
    plan = Plan([], known, failures, {}, new_attributes)
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


def _known_rows(
    session: Session, roots: dict[int, str], sources: Sources
) -> tuple[dict[Key, Known], dict[int, dict[str, Any]]]:
    """The rows under these roots, and the new attributes of those whose catalog columns
    changed (a price can change while the picture stays)."""
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
    known, new_attributes = {}, {}
    for row in rows:
        key = (roots[row.root_id], row.path)
        known[key] = Known(row.id, row.size, row.mtime_ns, row.sha256)
        attributes = sources.attributes.get(key, {})
        if key in sources.present and (row.attributes or {}) != attributes:
            new_attributes[row.id] = attributes
    return known, new_attributes
