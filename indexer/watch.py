"""Keeping a collection in step with its folders: one full run (which also catches whatever
changed while nobody watched), then file-system events (the watchdog library) applied in small
batches through the same incremental run as `clipsearch index`, with its crash safety and its
failure records.

Events only say *when* to run: each run scans the folders and plans from the catalog, so a
lost, doubled or reordered event changes nothing, and a move is found by content as always. A
run waits until the events have paused for SETTLE seconds, or until they have gone on for
MAX_WAIT, so a long copy is indexed as it goes; and a file written in the last SETTLE seconds
is held for the next run, so a file being copied is read once, complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from indexer.ignore import IGNORE_FILE
from indexer.scan import IMAGE_EXTENSIONS, outermost
from indexer.sync import Indexer
from indexer.writer import Summary
from search.errors import ClipsearchError

log = logging.getLogger(__name__)

SETTLE = 1.0  # seconds without an event, and since a file's last write, before it is read
MAX_WAIT = 10.0  # seconds of unbroken events after which a run goes ahead anyway
TICK = 0.2  # how often the watcher looks at what it has seen


class _Seen(FileSystemEventHandler):
    """When the watched folders last changed in a way a run would notice."""

    def __init__(self, ignored: Path) -> None:
        self.ignored = str(ignored.resolve())  # the collection's own files
        self.first: float | None = None  # the first change not yet applied
        self.last = 0.0
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or not any(
            _matters(str(path), event.is_directory, self.ignored)
            for path in (event.src_path, getattr(event, "dest_path", ""))
            if path
        ):
            return
        with self.lock:
            now = time.monotonic()
            self.first = self.first or now
            self.last = now

    def due(self, settle: float, max_wait: float) -> bool:
        """Whether changes wait and have paused (or waited long enough); if so, they are
        taken: changes from now on make the next run due."""
        with self.lock:
            now = time.monotonic()
            if self.first is None or (now - self.last < settle and now - self.first < max_wait):
                return False
            self.first = None
            return True

    def again(self) -> None:
        """Held files still wait for a run."""
        with self.lock:
            self.first = self.first or time.monotonic()
            self.last = time.monotonic()


def _matters(path: str, is_directory: bool, ignored: str) -> bool:
    if path == ignored or path.startswith(ignored + "/"):
        return False
    name = Path(path).name
    return is_directory or name == IGNORE_FILE or Path(name).suffix.lower() in IMAGE_EXTENSIONS


class Watcher:
    def __init__(
        self,
        indexer: Indexer,
        folders: Sequence[Path],
        on_run: Callable[[Summary], None] = lambda summary: None,
        settle: float = SETTLE,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.indexer = indexer
        self.folders = outermost(folder.resolve() for folder in folders)
        self.on_run = on_run
        self.settle = settle
        self.max_wait = max_wait
        self.seen = _Seen(indexer.collection.root)

    def run(self, stop: threading.Event) -> None:
        """Index, then follow the folders until `stop` is set."""
        observer = Observer()
        for folder in self.folders:
            observer.schedule(self.seen, str(folder), recursive=True)
        observer.start()  # before the first run: what changes during it is seen
        try:
            self._sync()  # an error here stops it: the folders cannot be indexed as they are
            while not stop.wait(TICK):
                if self.seen.due(self.settle, self.max_wait):
                    self._sync_or_wait()
        finally:
            observer.stop()
            observer.join()

    def _sync_or_wait(self) -> None:
        """A later run that fails (an ignore file half-saved, a full disk) is reported and
        tried again at the next change; what it committed stays."""
        try:
            self._sync()
        except ClipsearchError as exc:
            log.error("%s; trying again at the next change", exc)

    def _sync(self) -> None:
        summary = self.indexer.run(self.folders, written_before=time.time() - self.settle)
        if summary.held:
            self.seen.again()
        self.on_run(summary)
