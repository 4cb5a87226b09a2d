"""Finding the image files under a folder."""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.ignore import Chain, IgnoreRules

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | {".heic", ".heif"}
)


# The catalog stores paths as text, and SQLite's text is UTF-8: a name in another encoding
# (an old Windows archive's Latin-1, say) ended every run in a UnicodeEncodeError.
NOT_UTF8 = "its name is not UTF-8: rename it (convmv -f latin1 -t utf8 -r --notest FOLDER)"


def is_utf8(name: str) -> bool:
    """Whether a name from the file system is text (undecodable bytes come as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str) -> str:
    """A name that is not UTF-8 as text, its stray bytes written \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class FoundFile:
    root: str  # the absolute folder the user asked to index
    path: str  # POSIX path relative to root
    size: int
    mtime_ns: int

    @property
    def absolute(self) -> Path:
        return Path(self.root, self.path)

    @property
    def ext(self) -> str:
        # posixpath, not Path(...).suffix: the writer asks once per stored image, and parsing
        # a Path cost 2 of the 24 us the catalog write spends on one.
        return posixpath.splitext(self.path)[1].lower().lstrip(".")


@dataclass(frozen=True)
class Unreadable:
    """A file that looks like an image by name but cannot even be stat'ed."""

    root: str
    path: str
    reason: str


def scan(
    root: Path, exclude: frozenset[Path] = frozenset(), rules: IgnoreRules | None = None
) -> Iterator[FoundFile | Unreadable]:
    """Walk `root` recursively, following directory symlinks but never into a folder twice
    (so symlink loops end), skipping hidden entries, the `exclude` folders and what the ignore
    `rules` leave out (reading the ignore files they meet on the way)."""
    root = root.resolve()
    rules = rules or IgnoreRules()
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, Chain]] = [(root, rules.top)]
    while stack:
        folder, chain = stack.pop()
        entries = _listing(folder, seen)
        if entries is None:
            continue
        # String joins, not a Path per entry: pathlib's cost was most of a 20,000-file scan.
        prefix = "" if folder == root else folder.relative_to(root).as_posix() + "/"
        chain = rules.entering(chain, folder, prefix)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            is_image = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            try:
                if entry.is_dir(follow_symlinks=True):
                    if Path(entry.path).resolve() not in exclude and not rules.ignores(
                        chain, relative, is_dir=True
                    ):
                        stack.append((Path(entry.path), chain))
                    continue
                if not is_image or rules.ignores(chain, relative, is_dir=False):
                    continue
                if not is_utf8(relative):
                    yield Unreadable(str(root), shown(relative), NOT_UTF8)
                    continue
                info = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if is_image:
                    yield Unreadable(str(root), relative, f"cannot stat: {exc.strerror}")
                continue
            if not stat.S_ISREG(info.st_mode):
                # A FIFO or device named like an image would block or never end a read.
                yield Unreadable(str(root), relative, "not a regular file")
                continue
            yield FoundFile(str(root), relative, info.st_size, info.st_mtime_ns)


def _listing(folder: Path, seen: set[tuple[int, int]]) -> list[os.DirEntry[str]] | None:
    """The folder's entries by name, or None when it was visited already or cannot be listed."""
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            log.info("skipping %s: already visited (symlink loop or duplicate link)", folder)
            return None
        seen.add((info.st_dev, info.st_ino))
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc.strerror)
        return None


def outermost(folders: Iterable[Path]) -> list[Path]:
    """Each folder once, and none inside another: its files are found from the outer one. A
    file found twice, as `X X` or `X X/sub` gave it, was two catalog rows of one path (the run
    ended in SQLite's UNIQUE constraint) or one image twice in every result list."""
    unique = sorted(set(folders))
    return [
        inner for inner in unique if not any(inner.is_relative_to(f) for f in unique if f != inner)
    ]
