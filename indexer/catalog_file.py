"""Reading a product catalog (CSV or JSONL): one row per image, the other columns kept as
attributes that are returned with each result and usable as filters."""

from __future__ import annotations

import codecs
import csv
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from indexer.download import fetch_missing, folder_for, local_name
from indexer.scan import FoundFile, Unreadable
from search import jsontext
from search.errors import ClipsearchError

IMAGE_COLUMN = "image"
# The names the image column goes by, the first found first, in any case: ours, then Google
# Merchant Center's product feed and the usual exports (Shopify's "Image Src").
IMAGE_COLUMNS = (IMAGE_COLUMN, "image_link", "image_url", "image src")
DELIMITERS = ",;\t|"
URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # an image given as scheme://...
# Excel separates fields with ';' where the comma is the decimal point (most of Europe): a price
# there reads 3,50 or 1.234,50, which no range filter took for a number.
EUROPEAN_NUMBER = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?")
PRICE = re.compile(r"([+-]?\d+(?:[.,]\d+)?) ([A-Z]{3})")  # Google Merchant Center's 15.00 USD

log = logging.getLogger(__name__)


@dataclass
class CatalogRows:
    root: Path  # the catalog's folder: image paths are relative to it
    files: list[FoundFile] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    # By relative path, as JSON text: a million products' dicts took 0.4 GB more.
    attributes: dict[str, str] = field(default_factory=dict)


def read_catalog(
    path: Path, encoding: str = "utf-8", download: bool = False, progress: bool | None = None
) -> CatalogRows:
    """The rows of a catalog file in `encoding`; a CSV file's separator is found from its
    header (Excel writes ';' where a comma is the decimal point). An image listed again keeps
    its first row: a shop's variants may share a photo, and one photo is one search result. An
    image given as a URL is fetched, with `download`, into a folder beside the catalog, once."""
    root = path.resolve().parent
    result = CatalogRows(root)
    first: dict[str, int] = {}  # each image's first line
    again: list[tuple[str, int]] = []
    blank: list[int] = []  # rows without an image: a product not photographed yet
    urls: dict[str, str] = {}
    for number, row in _rows(path, encoding):
        if not (image := _image(path, number, row, download)):
            blank.append(number)
            continue
        key, url = image
        if key in first:
            again.append((key, number))
            continue
        first[key] = number
        if url is not None:
            urls[key] = url
        result.attributes[key] = jsontext.dumps({k: v for k, v in row.items() if k != IMAGE_COLUMN})
    failed = fetch_missing(root, urls, progress) if urls else {}
    for key in first:
        _add(result, key, failed.get(key))
    _say_left_out(path, first, again, blank)
    return result


def _say_left_out(
    path: Path, first: dict[str, int], again: list[tuple[str, int]], blank: list[int]
) -> None:
    """Rows left out are said once, each kind with the first line; a catalog whose rows all
    lack an image is a mistake (a JSONL key spelt 'img'), which would empty the collection."""
    if blank and not first:
        raise ClipsearchError(f"{path}: no row has an '{IMAGE_COLUMN}'")
    if again:
        key, number = again[0]
        message = "%s lists %d image(s) again, each kept with its first row (%s: lines %d, %d)"
        log.warning(message, path, len(again), key, first[key], number)
    if blank:
        message = "%s: %d row(s) without an image left out (the first on line %d)"
        log.warning(message, path, len(blank), blank[0])


def _add(result: CatalogRows, key: str, failed: str | None) -> None:
    """A listed image as a file to read, or as one that cannot be (missing, not downloaded)."""
    root = str(result.root)
    if failed is not None:
        result.unreadable.append(Unreadable(root, key, failed))
        return
    try:
        stat = os.stat(f"{root}/{key}")  # not a Path: pathlib was most of a 1M-row read
    except OSError as exc:
        result.unreadable.append(Unreadable(root, key, f"missing: {exc.strerror}"))
        return
    result.files.append(FoundFile(root, key, stat.st_size, stat.st_mtime_ns))


def _image(
    path: Path, number: int, row: dict[str, Any], download: bool
) -> tuple[str, str | None] | None:
    """A row's image, as a path relative to the catalog's folder, and the URL it comes from;
    None for a row without one."""
    image = row.get(IMAGE_COLUMN)
    if image is None or (isinstance(image, str) and not image.strip()):
        return None
    if not isinstance(image, str):
        raise ClipsearchError(f"{path}:{number}: '{IMAGE_COLUMN}' must be a path or a URL")
    image = image.strip()
    if URL.match(image):  # a shop's export often lists its CDN's addresses
        return local_name(path, _downloadable(path, number, image, download)), image
    if image.startswith("/") or ".." in image.split("/"):
        raise ClipsearchError(
            f"{path}:{number}: image {image!r} must be a path inside the catalog's folder"
        )
    return posixpath.normpath(image), None  # ./a//b is a/b


def _downloadable(path: Path, number: int, url: str, download: bool) -> str:
    if not download:
        raise ClipsearchError(
            f"{path}:{number}: image {url[:80]!r} is a URL: add --download to fetch the images "
            f"into {folder_for(path)}"
        )
    if not url.lower().startswith(("http://", "https://")):
        raise ClipsearchError(f"{path}:{number}: {url[:80]!r}: only http and https are fetched")
    return url


def _rows(path: Path, encoding: str) -> list[tuple[int, dict[str, Any]]]:
    """Each row with the number of the line it starts on."""
    suffix = path.suffix.lower()
    # utf-8-sig: UTF-8 with or without the byte-order mark that Excel puts first.
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        with open(path, newline="", encoding=codec) as handle:
            if suffix in (".csv", ".tsv", ".txt"):  # a product feed is often feed.txt
                return _csv_rows(path, handle)
            if suffix in (".jsonl", ".ndjson"):
                lines = enumerate(handle, start=1)
                return [(n, _json_row(path, n, line)) for n, line in lines if line.strip()]
    except OSError as exc:
        raise ClipsearchError(f"cannot read catalog {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ClipsearchError(
            f"catalog {path} is not {encoding} text: name its encoding (--encoding gb18030 for "
            "Excel in Chinese, cp1252 in Western Europe) or save it as UTF-8 (Excel: CSV UTF-8)"
        ) from None
    raise ClipsearchError(f"catalog {path} must be a .csv (.tsv, .txt) or .jsonl file")


def _csv_rows(path: Path, handle: TextIO) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a CSV file separated by whichever of DELIMITERS gives it an image column.
    Strict: a quote left open read the rest of the file as one field, so the products after it
    were silently left out (and dropped from the collection)."""
    header = handle.readline()
    handle.seek(0)
    delimiter = next((d for d in DELIMITERS if _image_key(_fields(header, d))), None)
    if delimiter is None:
        raise ClipsearchError(
            f"{path} has no '{IMAGE_COLUMN}' column (nor image_link, image_url, Image Src) in "
            f"{header.strip()[:80]!r}"
        )
    reader = csv.DictReader(handle, delimiter=delimiter, strict=True)
    rows, start = [], 2
    try:
        image = _image_key(reader.fieldnames or [])
        for row in reader:
            _whole(path, start, row, delimiter)
            kept = {name: value for name, value in row.items() if value is not None}
            rows.append((start, _named_image(kept, image)))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ClipsearchError(
            f"{path}:{start}: {exc}; a field with a quote in it needs quotes around it and the "
            'quote doubled ("12"" pizza")'
        ) from None
    # A feed's prices, 15.00 USD: one currency to a column, the number is what a range reads.
    _rewritten(rows, PRICE, lambda found: len({m[2] for m in found}) == 1, lambda m: m[1])
    if delimiter == ";":  # 3,50 and 1.234,50, where a column has a decimal comma: 3.50, 1234.50
        _rewritten(rows, EUROPEAN_NUMBER, lambda found: any("," in m[0] for m in found), _point)
    return rows


def _point(number: re.Match[str]) -> str:
    return number[0].replace(".", "").replace(",", ".")


def _rewritten(
    rows: list[tuple[int, dict[str, Any]]],
    pattern: re.Pattern[str],
    wanted: Callable[[list[re.Match[str]]], bool],
    rewrite: Callable[[re.Match[str]], str],
) -> None:
    """Each column most of whose values `pattern` matches (a few 'N/A' stay as they are), when
    `wanted` takes those matches, gets them as `rewrite` writes them. Columns whose first
    values are mostly something else (a title, a sku) are not read further."""
    for name in {name for _, row in rows[:1000] for name in row} - {IMAGE_COLUMN}:
        if _matched(rows[:1000], name, pattern) is None:
            continue
        matched = _matched(rows, name, pattern)
        if matched is not None and wanted([match for _, match in matched]):
            for row, match in matched:
                row[name] = rewrite(match)


def _matched(
    rows: list[tuple[int, dict[str, Any]]], name: str, pattern: re.Pattern[str]
) -> list[tuple[dict[str, Any], re.Match[str]]] | None:
    """The rows whose value of `name` the pattern matches, with the match, if they are most of
    those that have a value."""
    found = [
        (row, pattern.fullmatch(value)) for _, row in rows if (value := row.get(name, "").strip())
    ]
    matched = [(row, match) for row, match in found if match is not None]
    return matched if 2 * len(matched) > len(found) else None


def _whole(path: Path, line: int, row: dict[Any, Any], delimiter: str) -> None:
    """Fields beyond the header (DictReader's restkey) are most often a title's unquoted
    delimiter, which shifts every column after it; a short row only leaves its last ones out."""
    extra = [field for field in row.pop(None, []) if field.strip()]
    if extra:
        raise ClipsearchError(
            f"{path}:{line}: {len(row) + len(extra)} fields where the header has {len(row)}; "
            f"a field with {delimiter!r} in it needs quotes"
        )


def _image_key(names: Iterable[Any]) -> str | None:
    """Which of `names` is the image column ('Image': spreadsheets capitalise headers)."""
    found = {name.strip().lower(): name for name in names if isinstance(name, str)}
    return next((found[name] for name in IMAGE_COLUMNS if name in found), None)


def _named_image(row: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The row with its image column, `name`, named IMAGE_COLUMN."""
    if name is not None and name != IMAGE_COLUMN and name in row:
        row[IMAGE_COLUMN] = row.pop(name)
    return row


def _fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = jsontext.loads(line)
    except ValueError as exc:
        raise ClipsearchError(f"{path}:{number}: not valid JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise ClipsearchError(f"{path}:{number}: each line must be a JSON object")
    return _named_image(row, _image_key(row))
