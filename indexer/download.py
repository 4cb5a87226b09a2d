"""A catalog's images fetched from their URLs (a shop's export lists its CDN's addresses) into a
folder beside the catalog, once each: the run then reads them as it reads any listed file, and
the server serves and thumbnails them from there."""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from indexer.scan import IMAGE_EXTENSIONS
from search.storage import writing

MAX_BYTES = 100 * 1024 * 1024  # an image larger than this is not a product photo
TIMEOUT_SECONDS = 30  # to connect, and between two reads
DEADLINE_SECONDS = 300  # for the whole body: a host that trickles a byte a minute is given up on
WORKERS = 16  # downloads at once: the network waits, not the cores
CHUNK = 1 << 16
DOWNLOADED = re.compile(r"[0-9a-f]{64}(\.[a-z]+)?")  # the file names local_name gives


def folder_for(catalog: Path) -> Path:
    """products.csv keeps its downloads in products.images/, beside it."""
    return catalog.with_name(f"{catalog.stem}.images")


def local_name(catalog: Path, url: str) -> str:
    """Where a URL's image is kept, relative to the catalog's folder: a name of its own per URL
    (shops reuse file names across folders), with the URL's extension when it is an image's."""
    digest = hashlib.sha256(url.encode()).hexdigest()
    try:
        ext = posixpath.splitext(urlsplit(url).path)[1].lower()
    except ValueError:  # http://[::1 : its download fails, and says why
        ext = ""
    name = digest + (ext if ext in IMAGE_EXTENSIONS else "")
    return f"{folder_for(catalog).name}/{digest[:2]}/{name}"


def prune(catalog: Path, named: Set[str]) -> int:
    """Delete the downloads that no row of the catalog names any more (products the shop has
    dropped), so that the folder does not grow with every export; returns how many. Only the
    names local_name gives are touched: anything else there is someone else's."""
    folder = folder_for(catalog)
    removed = 0
    for path in folder.glob("[0-9a-f][0-9a-f]/*"):
        name = f"{folder.name}/{path.parent.name}/{path.name}"
        if DOWNLOADED.fullmatch(path.name) and name not in named:
            with writing(f"removing {path}, which no product names any more"):
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def fetch_missing(root: Path, urls: Mapping[str, str], progress: bool | None) -> dict[str, str]:
    """Download each URL whose file (`urls` maps names relative to `root` to URLs) is not
    there yet; returns why, for each one that failed. A full disk stops the run."""
    missing = [(name, url) for name, url in urls.items() if not (root / name).exists()]
    if not missing:
        return {}
    opener = urllib.request.build_opener()
    failed = {}
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="clipsearch-download")
    try:
        no_bar = None if progress is None else not progress  # None: a bar only on a terminal
        with tqdm(total=len(missing), unit="img", desc="downloading", disable=no_bar) as bar:
            whys = pool.map(lambda item: _fetch(opener, item[1], root / item[0]), missing)
            for (name, url), why in zip(missing, whys, strict=True):
                bar.update(1)
                if why is not None:
                    failed[name] = f"{why} ({url[:200]})"  # the file's name says nothing
    finally:  # a full disk or Ctrl-C: the downloads not started yet are not
        pool.shutdown(cancel_futures=True)
    return failed


def _fetch(opener: urllib.request.OpenerDirector, url: str, target: Path) -> str | None:
    """Download `url` to `target` through a temporary file; None, or why it could not be. The
    network's failures are the row's; the disk's (StorageError) stop the run."""
    part = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "clipsearch"})
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            if int(response.headers.get("Content-Length") or 0) > MAX_BYTES or not _copy(
                response, part
            ):
                return f"download refused: over {MAX_BYTES // 2**20} MB"
        with writing(f"downloading into {target.parent}", part):
            os.replace(part, target)
    except urllib.error.HTTPError as exc:
        return f"download failed: HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        return f"download failed: {getattr(exc, 'reason', None) or exc}"
    finally:
        part.unlink(missing_ok=True)
    return None


def _copy(response: http.client.HTTPResponse, part: Path) -> bool:
    """The body into `part`, unless it grows past MAX_BYTES (a Content-Length may be absent).
    Only the writes are the disk's: a read that fails is the network's."""
    where = f"downloading into {part.parent}"
    with writing(where, part):
        part.parent.mkdir(parents=True, exist_ok=True)
        out = open(part, "wb")  # noqa: SIM115 -- closed below, its writes checked one by one
    deadline = time.monotonic() + DEADLINE_SECONDS
    with out:
        copied = 0
        while chunk := response.read1(CHUNK):  # what has come: the deadline is checked often
            copied += len(chunk)
            if copied > MAX_BYTES:
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"still unfinished after {DEADLINE_SECONDS} s")
            with writing(where, part):
                out.write(chunk)
    return True
