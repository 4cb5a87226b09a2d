"""Reading a product catalog (CSV or JSONL): one row per image, the other columns kept as
attributes that are returned with each result and usable as filters."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.scan import FoundFile, Unreadable
from search.errors import ClipsearchError

IMAGE_COLUMN = "image"


@dataclass
class CatalogRows:
    root: Path  # the catalog's folder: image paths are relative to it
    files: list[FoundFile] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)  # by relative path


def read_catalog(path: Path) -> CatalogRows:
    rows = _rows(path)
    root = path.resolve().parent
    result = CatalogRows(root)
    for number, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        image = row.get(IMAGE_COLUMN)
        if not isinstance(image, str) or not image.strip():
            raise ClipsearchError(f"{path}:{number}: the '{IMAGE_COLUMN}' column is empty")
        relative = Path(image.strip())
        if relative.is_absolute() or ".." in relative.parts:
            raise ClipsearchError(
                f"{path}:{number}: image {image!r} must be a path inside the catalog's folder"
            )
        key = relative.as_posix()
        result.attributes[key] = {k: v for k, v in row.items() if k != IMAGE_COLUMN}
        try:
            stat = (root / relative).stat()
        except OSError as exc:
            result.unreadable.append(Unreadable(str(root), key, f"missing: {exc.strerror}"))
            continue
        result.files.append(FoundFile(str(root), key, stat.st_size, stat.st_mtime_ns))
    return result


def _rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if suffix == ".csv":
                reader = csv.DictReader(handle)
                if IMAGE_COLUMN not in (reader.fieldnames or []):
                    raise ClipsearchError(f"{path} has no '{IMAGE_COLUMN}' column")
                return list(reader)
            if suffix in (".jsonl", ".ndjson"):
                lines = enumerate(handle, start=1)
                return [_json_row(path, n, line) for n, line in lines if line.strip()]
    except OSError as exc:
        raise ClipsearchError(f"cannot read catalog {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ClipsearchError(f"cannot parse catalog {path}: {exc}") from exc
    raise ClipsearchError(f"catalog {path} must be a .csv or .jsonl file")


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ClipsearchError(f"{path}:{number}: not valid JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise ClipsearchError(f"{path}:{number}: each line must be a JSON object")
    return row
