"""Which files a run leaves out: the `--exclude` globs and the `.clipsearchignore` files found in
the indexed folders, with gitignore's syntax and meaning (pathspec's GitIgnoreSpec).

A pattern in a folder's ignore file is relative to that folder, and applies to everything under
it; a deeper file's verdict overrides a shallower one's and `--exclude` is the shallowest of
all; within one set the last matching pattern wins and `!` takes a file back; nothing under an
ignored folder comes back, because the scan never enters it (git's rule too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathspec import GitIgnoreSpec

from search.errors import ClipsearchError
from search.storage import read_small_text

IGNORE_FILE = ".clipsearchignore"
MAX_IGNORE_BYTES = 1 << 20


@dataclass(frozen=True)
class _Rules:
    prefix: str  # the folder they were written in, relative to the root: "" or "a/b/"
    spec: GitIgnoreSpec


Chain = tuple[_Rules, ...]  # the rules in force in one folder, shallowest first


class IgnoreRules:
    """One indexed root's rules, and the ignore files its scan has read so far (for `stats`)."""

    def __init__(self, excludes: Sequence[str] = ()) -> None:
        self.excludes = list(excludes)
        self.files: dict[str, list[str]] = {}  # ignore file, relative to the root -> patterns
        self.top: Chain = (_Rules("", _spec(self.excludes, "--exclude")),) if excludes else ()

    def entering(self, chain: Chain, folder: Path, prefix: str) -> Chain:
        """The rules in force inside `folder` (`prefix` under the root): its parent's, then its
        own ignore file's. A file that cannot be read or parsed stops the run: indexing on
        without it would take in exactly what someone asked to keep out."""
        path = folder / IGNORE_FILE
        try:
            lines = read_small_text(path, MAX_IGNORE_BYTES).splitlines()
        except FileNotFoundError:
            return chain
        except (OSError, UnicodeDecodeError) as exc:
            raise ClipsearchError(f"cannot read {path}: {getattr(exc, 'strerror', exc)}") from None
        patterns = [line for line in lines if line.strip() and not line.startswith("#")]
        self.files[prefix + IGNORE_FILE] = patterns
        return (*chain, _Rules(prefix, _spec(lines, str(path))))

    @staticmethod
    def ignores(chain: Chain, relative: str, is_dir: bool) -> bool:
        """Whether the entry at `relative` (to the root) is left out."""
        name = relative + "/" if is_dir else relative
        verdict: bool | None = None
        for rules in chain:
            if name.startswith(rules.prefix):
                found = rules.spec.check_file(name[len(rules.prefix) :]).include
                verdict = verdict if found is None else found
        return bool(verdict)

    def to_json(self) -> dict[str, Any]:
        return {"exclude": self.excludes, "ignore_files": self.files}


def _spec(lines: Sequence[str], origin: str) -> GitIgnoreSpec:
    try:
        return GitIgnoreSpec.from_lines(lines)
    except ValueError as exc:  # pathspec's pattern errors, under names that vary by release
        raise ClipsearchError(f"{origin}: not a gitignore pattern: {exc}") from None
