"""Originals and thumbnails, served by image id only: no request names a path."""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, send_file

from search.catalog import ImageRecord
from search.errors import ImageError, NotFound, StorageError
from search.imaging import make_thumbnail
from search.sandbox import run_bounded
from search.storage import writing
from web import get_engine

log = logging.getLogger(__name__)
files = Blueprint("files", __name__)


def _indexed_file(image_id: int) -> tuple[ImageRecord, Path]:
    """The file of an indexed image, provided it is still the file that was indexed."""
    record = get_engine().image(image_id)
    path = record.file_path
    try:
        stat = path.stat()
    except OSError:
        raise NotFound(f"the file of image {image_id} is gone; re-run the indexer") from None
    if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
        raise NotFound(f"the file of image {image_id} changed since indexing; re-run the indexer")
    return record, path


@files.get("/images/<int:image_id>")
def original(image_id: int) -> Any:
    record, path = _indexed_file(image_id)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return send_file(path, mimetype=mimetype, etag=record.sha256, max_age=3600)


@files.get("/thumbs/<int:image_id>")
def thumbnail(image_id: int) -> Any:
    record, path = _indexed_file(image_id)
    cache = get_engine().collection.thumbnails / record.sha256[:2] / f"{record.sha256}.jpg"
    headers = {"etag": record.sha256, "max_age": current_app.config["THUMBNAIL_MAX_AGE"]}
    if cache.exists():
        return send_file(cache, mimetype="image/jpeg", **headers)
    try:
        data = run_bounded(make_thumbnail, path.read_bytes())
    except (ImageError, OSError) as exc:
        raise NotFound(f"no thumbnail for image {image_id}: {exc}") from None
    _keep(cache, data)
    return send_file(io.BytesIO(data), mimetype="image/jpeg", **headers)


def _keep(cache: Path, data: bytes) -> None:
    """Cache a thumbnail if the disk allows; a read-only or full one only costs a re-render."""
    if get_engine().collection.read_only:
        return
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with writing(f"caching a thumbnail in {cache.parent}", tmp):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, cache)
    except StorageError as exc:
        log.warning("%s", exc)
