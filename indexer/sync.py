"""Bringing a collection in line with its sources (image folders or a product catalog): add new
files, re-encode changed ones, keep the vectors of moved ones, drop deleted ones, and record the
ones that cannot be used."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from tqdm import tqdm

from indexer.catalog_file import read_catalog
from indexer.download import prune
from indexer.ignore import IgnoreRules
from indexer.items import Result
from indexer.plan import Sources, folder_roots, holder, make_plan
from indexer.scan import NOT_UTF8, FoundFile, Unreadable, is_utf8, scan, shown
from indexer.tagging import Tagger
from indexer.writer import Summary, Writer
from search.catalog import ImageRecord, Root
from search.collection import Collection
from search.errors import ClipsearchError, CollectionError
from search.imaging import DEFAULT_MAX_PIXELS
from search.sandbox import start_fork_server

if TYPE_CHECKING:
    from indexer.source import Source
    from search.model import Encoder

log = logging.getLogger(__name__)


class Indexer:
    def __init__(
        self,
        collection: Collection,
        encoder: Encoder | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool | None = None,
        device: str = "auto",
        ray: str | None = None,
        excludes: Sequence[str] = (),
    ) -> None:
        """Without `encoder`, the collection's model is loaded on `device` only once a file
        needs encoding: a run with nothing new never imports torch. `ray`: encode on a Ray
        cluster instead, at that address ("": RAY_ADDRESS if set, else a local cluster).
        `excludes`: gitignore patterns left out of every folder, beside its ignore files."""
        self.collection = collection
        self.catalog = collection.catalog
        self._encoder = encoder
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.progress = progress  # None: a bar only on a terminal
        self.ray = ray
        self.excludes = list(excludes)
        IgnoreRules(self.excludes)  # a bad pattern stops the run before it starts
        self._source: Source | None = None
        self._model_seconds = 0.0

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            started = time.perf_counter()
            self._encoder = self.collection.encoder(self.device)
            self._model_seconds += time.perf_counter() - started
        return self._encoder

    @property
    def source(self) -> Source:
        """This machine's decode workers and model, or a Ray cluster's, made once a file needs
        encoding. Joining the cluster and its actors' model loading count as loading the model."""
        if self._source is None and self.ray is None:
            from indexer.source import LocalSource

            start_fork_server()  # the decode workers' imports overlap the model's loading
            self._source = LocalSource(self.encoder, self.batch_size, self.workers, self.max_pixels)
        elif self._source is None:
            from indexer.ray_source import RaySource

            started = time.perf_counter()
            spec, address = self.collection.spec, self.ray or None
            self._source = RaySource(spec, address, self.batch_size, self.max_pixels)
            self._model_seconds += time.perf_counter() - started
        return self._source

    def run(self, folders: Sequence[Path], written_before: float | None = None) -> Summary:
        """Index image folders recursively. Files modified at or after `written_before` (a
        time.time()) are held for a later run, neither read nor dropped: they may still be
        being copied, and a file read half-written would be read again once complete."""
        for folder in folders:
            if not folder.is_dir():
                raise ClipsearchError(f"not a folder: {shown(str(folder))}")
            if not is_utf8(str(folder.resolve())):
                raise ClipsearchError(f"{shown(str(folder.resolve()))}: {NOT_UTF8}")
        started = time.perf_counter()
        with self.collection.writer():
            roots = self._roots([folder.resolve() for folder in folders])
            exclude = frozenset({self.collection.root.resolve()})
            rules = {root: IgnoreRules(self.excludes) for root in roots}
            found = [entry for root in roots for entry in scan(root, exclude, rules[root])]
            files = [entry for entry in found if isinstance(entry, FoundFile)]
            unreadable = [entry for entry in found if isinstance(entry, Unreadable)]
            ignore_rules = {str(root): rules[root].to_json() for root in roots}
            sources = Sources(roots, files, unreadable, ignore_rules=ignore_rules, absorbs=True)
            if written_before is not None:
                sources.hold_newer(int(written_before * 1e9))
            return self._sync(sources, started)

    def _roots(self, folders: list[Path]) -> list[Path]:
        """The folders to scan, saying so where a folder was widened to one indexed already.
        A shop's folder, indexed from its catalog, is refused: a folder run would drop its
        products' attributes and add every image in it, listed or not."""
        with self.catalog.sessions() as session:
            recorded = {Path(root.path): root.catalog for root in session.scalars(select(Root))}
        roots = folder_roots(folders, recorded)
        for path, catalog in recorded.items():
            if catalog is not None and holder(path, roots):
                raise ClipsearchError(
                    f"{path} is indexed from its catalog: run 'clipsearch index --catalog "
                    f"{path / catalog}' (or index the photos into another --data-dir)"
                )
        for folder in folders:
            if (outer := holder(folder, roots)) not in folders:
                log.info("%s is inside %s, indexed already: scanning all of it", folder, outer)
        return roots

    def run_catalog(self, path: Path, encoding: str = "utf-8", download: bool = False) -> Summary:
        """Index the images a CSV or JSONL catalog lists, with its columns as attributes;
        `download`: fetch those it gives as URLs first (indexer/download.py)."""
        started = time.perf_counter()
        with self.collection.writer():
            rows = read_catalog(path, encoding, download, self.progress)
            attributes = {(str(rows.root), key): value for key, value in rows.attributes.items()}
            sources = Sources(
                [rows.root], rows.files, rows.unreadable, attributes, catalog=path.name
            )
            summary = self._sync(sources, started)
            if download and (pruned := prune(path, rows.attributes.keys())):
                log.info("removed %d downloaded images that no product names any more", pruned)
            return summary

    def _sync(self, sources: Sources, started: float) -> Summary:
        """`started`: when the run began, its scan or catalog read included in its seconds."""
        if (pending := self.collection.next_spec()) is not None:
            raise CollectionError(
                f"{self.collection.root} is moving to {pending.describe()}: finish that first, "
                "with 'clipsearch index FOLDER --rebuild'"
            )
        with self.catalog.sessions() as session:
            plan = make_plan(session, sources)
        writer = Writer(self.collection, plan, sources, lambda seen: self.source.encode_one(seen))
        with writer.saving():
            if plan.todo:
                self._encode(plan.todo, writer)
            writer.record_unreadable(sources.unreadable)
            writer.remove_missing(sources.present)
            writer.tag(Tagger(self.collection, lambda: self.encoder))
        summary = writer.summary
        summary.scanned = len(sources.files) + len(sources.unreadable) + len(sources.held)
        summary.held = len(sources.held)
        summary.seconds = time.perf_counter() - started
        summary.model_seconds, self._model_seconds = self._model_seconds, 0.0
        return summary

    def _encode(self, todo: list[FoundFile], writer: Writer) -> None:
        no_bar = None if self.progress is None else not self.progress
        with tqdm(total=len(todo), unit="img", desc="indexing", disable=no_bar, leave=False) as bar:

            def write(batch: list[Result]) -> None:
                writer.write(batch)
                bar.update(len(batch))

            # Closed on the way out, error or not: the decode workers are stopped and joined
            # here, not at interpreter exit, where a worker still starting printed a traceback.
            with contextlib.closing(self.source.batches(todo, self._catalog_hashes())) as batches:
                _write_behind(batches, write)

    def _catalog_hashes(self) -> list[str]:
        with self.catalog.sessions() as session:
            return list(session.scalars(select(ImageRecord.sha256).distinct()))


def _write_behind(batches: Iterable[list[Result]], write: Callable[[list[Result]], None]) -> None:
    """Write each batch on a thread of its own while the source prepares the next one, so the
    encoder does not wait for SQLite and FAISS. Batches are written in order, one at a time; an
    error or Ctrl-C here still lets the write under way finish."""
    with ThreadPoolExecutor(1, thread_name_prefix="clipsearch-writer") as thread:
        pending: Future[None] | None = None
        for batch in batches:
            if pending is not None:
                pending.result()  # the writer's error, if it had one, stops the run here
            pending = thread.submit(write, batch)
        if pending is not None:
            pending.result()
