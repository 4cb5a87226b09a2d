"""Read → hash → decode → size for the model in worker processes, so the encoder never waits on
files and no file can take the run down.

Workers hand over uint8 pixels at the model's input size (a quarter of float32's bytes), resized
by torch's uint8 kernel (search/imaging.py; the fork server imports torch once for all of them),
in shared slots that a thread of the main process copies straight into the batch the encoder
reads; the encoder normalises them. Each worker's memory is capped; one that dies anyway (a
decoder bug, the OOM killer, a stray SIGKILL) is replaced, the file it was on is tried once more
on its own, and only a second death records it as failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from indexer.items import Failed, Seen
from indexer.scan import FoundFile
from indexer.slots import PixelSlots, WorkerSlots
from search.errors import ImageError
from search.imaging import DEFAULT_MAX_PIXELS, InputLayout, decode_for_model
from search.sandbox import StderrCapture, describe_exit, limit_resources, preload, processes

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
preload(__name__)  # what each worker runs, imported once by the fork server
CHUNK_SECONDS = 60  # a worker that spends longer on one chunk is stopped, as if it had died
QUEUED_BATCHES = 2  # batches assembled ahead of the one the caller is encoding


@dataclass
class Loaded:
    """A file read and decoded, ready for the encoder."""

    file: FoundFile
    sha256: str
    pixels: np.ndarray  # model_input(): (size, size, 3) uint8, until handed over to a Batch
    width: int
    height: int
    taken_at: datetime | None


Item = Loaded | Seen | Failed
_HANDED_OVER = np.empty(0, np.uint8)  # a Loaded item's pixels once they are in a slot or a batch


@dataclass
class Batch:
    """Files in the order workers finished them. The pixels of its Loaded items are the rows of
    `pixels`, in the same order. They are valid until the next batch is asked for: its buffer
    is then filled again."""

    items: list[Item]
    pixels: np.ndarray  # (Loaded items, size, size, 3) uint8

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class _Assembler:
    """Items into batches of `size`, each Loaded item's pixels copied into its batch's buffer as
    it arrives: out of a worker's slot straight into the array the encoder reads. A copy out of
    the slot and another into the batch had made the main process spend 138 us a 224 px image
    outside the encoder, against 111 now (benchmarks/host_cost.py). Buffers go round: the batch
    `QUEUED_BATCHES + 2` ago was encoded before this one is filled, as the caller holds one
    batch and the queue the others."""

    def __init__(self, size: int, allocate: Callable[[], np.ndarray]) -> None:
        self.size = size
        self.allocate = allocate
        self.buffers: list[np.ndarray] = []
        self.made = 0  # batches so far
        self.items: list[Item] = []
        self.rows = 0

    def add(self, item: Item, pixels: np.ndarray | None = None) -> Batch | None:
        """`pixels`: where a Loaded item's are when not in the item (a worker's slot). A batch
        when this item completes one."""
        if isinstance(item, Loaded):
            self._buffer()[self.rows] = item.pixels if pixels is None else pixels
            item.pixels = _HANDED_OVER
            self.rows += 1
        self.items.append(item)
        return self.flush() if len(self.items) == self.size else None

    def flush(self) -> Batch | None:
        """The items so far as a batch, if there are any."""
        if not self.items:
            return None
        batch = Batch(self.items, self._buffer()[: self.rows])
        self.items, self.rows = [], 0
        self.made += 1
        return batch

    def _buffer(self) -> np.ndarray:
        at = self.made % (QUEUED_BATCHES + 2)
        if at == len(self.buffers):
            self.buffers.append(self.allocate())
        return self.buffers[at]


class KnownContent:
    """The catalog's content hashes, as sorted 64-bit prefixes: 8 bytes a file to hand each
    worker. A prefix collision only makes the indexer decode that file in the main process."""

    def __init__(self, hashes: Iterable[str]) -> None:
        prefixes = [int(digest[:16], 16) for digest in hashes]
        self.prefixes = np.unique(np.array(prefixes, dtype=np.uint64))

    def __contains__(self, digest: str) -> bool:
        prefix = np.uint64(int(digest[:16], 16))
        at = int(np.searchsorted(self.prefixes, prefix))
        return at < len(self.prefixes) and self.prefixes[at] == prefix


def load_file(file: FoundFile, known: KnownContent, layout: InputLayout, max_pixels: int) -> Item:
    try:
        data = file.absolute.read_bytes()
    except FileNotFoundError:
        return Failed(file, "vanished before it could be read")
    except OSError as exc:
        return Failed(file, f"unreadable: {exc.strerror}")
    except MemoryError:
        return Failed(file, f"too large to read ({file.size:,} bytes)")
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 in known:
        return Seen(file, sha256)
    try:
        decoded = decode_for_model(data, layout, max_pixels)
    except ImageError as exc:
        return Failed(file, str(exc))
    return Loaded(file, sha256, decoded.pixels, decoded.width, decoded.height, decoded.taken_at)


def load_batches(
    files: Sequence[FoundFile],
    layout: InputLayout,
    known: KnownContent,
    batch_size: int,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allocate: Callable[[], np.ndarray] | None = None,
) -> Iterator[Batch]:
    """Every file once, as Loaded, Seen or Failed (its content is `known`), in batches of
    `batch_size` (in the order workers finish them); `workers=0` decodes in this process.
    `allocate` makes a (batch_size, size, size, 3) uint8 buffer for the pixels (the encoder's
    is page-locked on a GPU)."""
    shape = (batch_size, layout.size, layout.size, 3)
    assembler = _Assembler(batch_size, allocate or (lambda: np.empty(shape, np.uint8)))
    if workers:
        chunk = max(1, min(32, batch_size // (2 * workers)))
        yield from _Pool(workers, 2 * chunk, (known, layout, max_pixels)).run(
            files, chunk, assembler
        )
        return
    for file in files:
        if batch := assembler.add(load_file(file, known, layout, max_pixels)):
            yield batch
    if batch := assembler.flush():
        yield batch


@dataclass
class _Worker:
    process: Any
    conn: Connection
    row: int  # in the pixel slots
    held: deque[list[int]] = field(default_factory=deque)  # chunks, in the order it works
    since: float = field(default_factory=time.monotonic)  # when its current chunk began

    @property
    def files(self) -> int:
        return sum(map(len, self.held))


class _Pool:
    """Worker processes fed chunks of files through their own pipes, so the main process always
    knows which chunk each one is on. A chunk's results come back in one message: a message (and
    a wake-up of the receiving thread) per file held decoding alone to 3,650 img/s on 2 cores,
    against 4,200 this way. Of a chunk whose worker died, each file is tried again alone."""

    def __init__(self, size: int, depth: int, setup: tuple[KnownContent, InputLayout, int]) -> None:
        self.size = size
        self.depth = depth  # files a worker holds at most: its slots for their pixels
        self.setup = setup
        self.workers: list[_Worker] = []
        self.slots: PixelSlots | None = None

    def run(self, files: Sequence[FoundFile], chunk: int, assembler: _Assembler) -> Iterator[Batch]:
        """Batches in the order workers finish their files. A thread of this process receives
        and assembles them, so workers keep decoding while the caller encodes (their pipes hold
        less than one image); up to QUEUED_BATCHES wait for the caller."""
        results: queue.Queue[Batch | BaseException | None] = queue.Queue(QUEUED_BATCHES)
        stop = threading.Event()
        receiver = threading.Thread(
            target=self._receive_all,
            args=(files, chunk, assembler, results, stop),
            name="clipsearch-decode",
            daemon=True,
        )
        receiver.start()
        try:
            while (done := results.get()) is not None:
                if isinstance(done, BaseException):
                    raise done
                yield done
        finally:
            stop.set()
            receiver.join()

    def _receive_all(
        self,
        files: Sequence[FoundFile],
        chunk: int,
        assembler: _Assembler,
        results: queue.Queue[Batch | BaseException | None],
        stop: threading.Event,
    ) -> None:
        def hand_over(item: Batch | BaseException | None) -> bool:
            while not stop.is_set():  # the caller may have stopped taking them
                with contextlib.suppress(queue.Full):
                    results.put(item, timeout=0.1)
                    return True
            return False

        try:
            with contextlib.closing(self._assembled(files, chunk, assembler, stop)) as batches:
                if all(hand_over(batch) for batch in batches):
                    hand_over(None)
        except BaseException as exc:  # raised again in the caller's thread
            hand_over(exc)

    def _assembled(
        self, files: Sequence[FoundFile], chunk: int, assembler: _Assembler, stop: threading.Event
    ) -> Iterator[Batch]:
        """Each chunk's pixels are copied out of their slots before `_chunks` goes on to send
        the worker more files."""
        with contextlib.closing(self._chunks(files, chunk, stop)) as chunks:
            for done in chunks:
                for item, pixels in done:
                    if batch := assembler.add(item, pixels):
                        yield batch
        if batch := assembler.flush():
            yield batch

    def _chunks(
        self, files: Sequence[FoundFile], chunk: int, stop: threading.Event
    ) -> Iterator[list[tuple[Item, np.ndarray | None]]]:
        """Each chunk's results with the slots that hold their pixels, valid until the next."""
        todo = deque(
            list(range(start, min(start + chunk, len(files))))
            for start in range(0, len(files), chunk)
        )
        retried: set[int] = set()
        self.slots = PixelSlots(self.size, self.depth, self.setup[1].size)
        try:
            self.workers = [self._start(row) for row in range(self.size)]
            while (todo or any(worker.held for worker in self.workers)) and not stop.is_set():
                self._feed(todo, files)
                wait([w.conn for w in self.workers], timeout=0.2)
                for worker in list(self.workers):
                    # Drained before judging: a worker's results may have waited in its pipe,
                    # and their arrival is what restarts its clock.
                    yield from self._receive(worker)
                    if _overdue(worker) or not worker.process.is_alive():
                        yield from self._replace(worker, todo, files, retried)
        finally:
            for worker in self.workers:
                worker.process.kill()
                worker.process.join()
                worker.conn.close()
            self.slots.close()

    def _start(self, row: int) -> _Worker:
        assert self.slots is not None
        ours, theirs = processes.Pipe()
        args = (theirs, self.setup, self.slots.worker_view(row))
        process = processes.Process(target=_work, args=args, daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, ours, row)

    def _feed(self, todo: deque[list[int]], files: Sequence[FoundFile]) -> None:
        """Chunks to workers, as long as each holds at most `depth` files in all: its n-th result
        lands in slot n % depth, which must be read before the worker writes it again (a worker
        sent a chunk while holding more than depth - chunk overwrote pixels still unread, and
        files were stored with other files' vectors)."""
        for worker in self.workers:
            while todo and worker.files + len(todo[0]) <= self.depth:
                seqs = todo.popleft()
                if not worker.held:
                    worker.since = time.monotonic()
                worker.conn.send([files[seq] for seq in seqs])
                worker.held.append(seqs)

    def _receive(self, worker: _Worker) -> Iterator[list[tuple[Item, np.ndarray | None]]]:
        assert self.slots is not None
        try:
            while worker.conn.poll():
                results = worker.conn.recv()  # a chunk's, in the order its files were sent
                worker.held.popleft()
                worker.since = time.monotonic()
                for item, _, noise in results:
                    if noise:
                        log.debug("decoder output for %s: %s", item.file.path, noise)
                yield [(item, self.slots.slot(worker.row, slot)) for item, slot, _ in results]
        except (EOFError, OSError):
            pass  # it died: the next round finds it dead and replaces it

    def _replace(
        self,
        worker: _Worker,
        todo: deque[list[int]],
        files: Sequence[FoundFile],
        retried: set[int],
    ) -> Iterator[list[tuple[Item, np.ndarray | None]]]:
        """Each file of the chunk a dead (or stuck) worker was on is retried alone once; a file
        that kills its worker alone is failed. The chunks it held after that go back to the
        front of the queue."""
        yield from self._receive(worker)  # what it finished before it died
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        why = "took too long" if _overdue(worker) else describe_exit(worker.process.exitcode)
        self.workers[self.workers.index(worker)] = self._start(worker.row)
        if not worker.held:
            return
        current, *rest = worker.held
        todo.extendleft(reversed(rest))
        if len(current) == 1 and current[0] in retried:
            yield [(Failed(files[current[0]], f"the decoder crashed ({why})"), None)]
        else:
            retried.update(current)
            todo.extendleft([seq] for seq in reversed(current))


def _overdue(worker: _Worker) -> bool:
    return bool(worker.held) and time.monotonic() - worker.since > CHUNK_SECONDS


def _work(
    conn: Connection, setup: tuple[KnownContent, InputLayout, int], slots: WorkerSlots
) -> None:
    """A worker's life: chunks of files in, a list of (result, slot, decoder output) out per
    chunk, the pixels in the slots, until the main process goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle
    _die_with_parent()
    slots.open()  # before the memory cap, which counts what is mapped by then as its base
    limit_resources()
    stderr = StderrCapture()
    known, layout, max_pixels = setup
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        _read_ahead(chunk)
        results = []
        for file in chunk:
            try:
                item = load_file(file, known, layout, max_pixels)
            except Exception as exc:  # a bug here must cost one file, not the run
                item = Failed(file, f"cannot decode image ({type(exc).__name__})")
            slot = -1
            if isinstance(item, Loaded):
                slot, item.pixels = slots.put(item.pixels), _HANDED_OVER
            results.append((item, slot, stderr.drain()))
        conn.send(results)


def _read_ahead(files: Iterable[FoundFile]) -> None:
    """Have the kernel start reading a chunk's files, so that the disk works while the worker
    decodes the first ones: a 15 KB photo read cold costs 90 us here, from the cache 9 us."""
    if not hasattr(os, "posix_fadvise"):
        return
    for file in files:
        with contextlib.suppress(OSError):  # a file gone or unreadable fails when it is read
            fd = os.open(file.absolute, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def _die_with_parent() -> None:
    """Workers must not outlive the indexer (they would hold memory until they noticed)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
