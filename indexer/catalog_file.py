"""Reading a product catalog (CSV or JSONL): one row per image, the other columns kept as
attributes that are returned with each result and usable as filters."""

from __future__ import annotations

import codecs
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from indexer.scan import FoundFile, Unreadable
from search.errors import ClipsearchError

IMAGE_COLUMN = "image"
DELIMITERS = ",;\t|"

log = logging.getLogger(__name__)


@dataclass
class CatalogRows:
    root: Path  # the catalog's folder: image paths are relative to it
    files: list[FoundFile] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)  # by relative path


def read_catalog(path: Path, encoding: str = "utf-8") -> CatalogRows:
    """The rows of a catalog file in `encoding`; a CSV file's separator is found from its
    header (Excel writes ';' where a comma is the decimal point). An image listed again keeps
    its first row: a shop's variants may share a photo, and one photo is one search result."""
    root = path.resolve().parent
    result = CatalogRows(root)
    first: dict[str, int] = {}  # each image's first line
    again: list[tuple[str, int]] = []
    start = 2 if path.suffix.lower() == ".csv" else 1  # a CSV file's first line is its header
    for number, row in enumerate(_rows(path, encoding), start=start):
        key = _image(path, number, row)
        if key in first:
            again.append((key, number))
            continue
        first[key] = number
        result.attributes[key] = {k: v for k, v in row.items() if k != IMAGE_COLUMN}
        try:
            stat = (root / key).stat()
        except OSError as exc:
            result.unreadable.append(Unreadable(str(root), key, f"missing: {exc.strerror}"))
            continue
        result.files.append(FoundFile(str(root), key, stat.st_size, stat.st_mtime_ns))
    if again:
        key, number = again[0]
        message = "%s lists %d image(s) again, each kept with its first row (%s: lines %d, %d)"
        log.warning(message, path, len(again), key, first[key], number)
    return result


def _image(path: Path, number: int, row: dict[str, Any]) -> str:
    """A row's image, as a path relative to the catalog's folder."""
    image = row.get(IMAGE_COLUMN)
    if not isinstance(image, str) or not image.strip():
        raise ClipsearchError(f"{path}:{number}: the '{IMAGE_COLUMN}' column is empty")
    relative = Path(image.strip())
    if relative.is_absolute() or ".." in relative.parts:
        raise ClipsearchError(
            f"{path}:{number}: image {image!r} must be a path inside the catalog's folder"
        )
    return relative.as_posix()


def _rows(path: Path, encoding: str) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    # utf-8-sig: UTF-8 with or without the byte-order mark that Excel puts first.
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        with open(path, newline="", encoding=codec) as handle:
            if suffix == ".csv":
                return _csv_rows(path, handle)
            if suffix in (".jsonl", ".ndjson"):
                lines = enumerate(handle, start=1)
                return [_json_row(path, n, line) for n, line in lines if line.strip()]
    except OSError as exc:
        raise ClipsearchError(f"cannot read catalog {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ClipsearchError(
            f"catalog {path} is not {encoding} text: name its encoding (--encoding gb18030 for "
            "Excel in Chinese, cp1252 in Western Europe) or save it as UTF-8 (Excel: CSV UTF-8)"
        ) from None
    except csv.Error as exc:
        raise ClipsearchError(f"cannot parse catalog {path}: {exc}") from exc
    raise ClipsearchError(f"catalog {path} must be a .csv or .jsonl file")


def _csv_rows(path: Path, handle: TextIO) -> list[dict[str, Any]]:
    """The rows of a CSV file separated by whichever of DELIMITERS gives it an image column."""
    header = handle.readline()
    handle.seek(0)
    delimiter = next((d for d in DELIMITERS if IMAGE_COLUMN in _fields(header, d)), None)
    if delimiter is None:
        raise ClipsearchError(f"{path} has no '{IMAGE_COLUMN}' column in {header.strip()[:80]!r}")
    reader = csv.DictReader(handle, delimiter=delimiter)
    rows = []
    for row in reader:
        # Fields beyond the header (DictReader's restkey) are most often a title's unquoted
        # comma, which shifts every column after it; a short row only leaves its last ones out.
        extra = [field for field in row.pop(None, []) if field.strip()]
        if extra:
            raise ClipsearchError(
                f"{path}:{reader.line_num}: {len(row) + len(extra)} fields where the header has "
                f"{len(row)}; a field with {delimiter!r} in it needs quotes"
            )
        rows.append({name: value for name, value in row.items() if value is not None})
    return rows


def _fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ClipsearchError(f"{path}:{number}: not valid JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise ClipsearchError(f"{path}:{number}: each line must be a JSON object")
    return row
