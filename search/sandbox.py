"""Decoding untrusted bytes in a child process whose memory and CPU time are capped, so that no
file or upload can take the calling process down.

Pillow's own checks refuse the bombs they know; this bounds the ones nobody knows yet (a decoder
bug, a format quirk). The children are forked from a server process that has imported what they
run (the imaging code with the torch it resizes with, the decode worker): they start in
milliseconds and their address space is their own. The server's own start costs about 1.2 s
(torch's import), so it is started early, beside the caller's own imports or model loading.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import tempfile
import threading
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from search.errors import ImageError

log = logging.getLogger(__name__)

DECODE_MEMORY = 3 << 30  # bytes a decode may map beyond what the child starts with
DECODE_SECONDS = 20  # CPU seconds a decode may take; a 150 MP PNG takes about 3
CONCURRENT_DECODES = 2  # children at once (2 cores here): together at most 2 x DECODE_MEMORY

processes = multiprocessing.get_context("forkserver")
# The modules the fork server imports once, for every child it forks. "__main__" asks it for the
# program's main module, but Python drops that request until CPython gh-126631 (3.11 here), and
# each child runs the main script again. A script should import little at its top level (the
# `clipsearch` console script imports its command line inside `main`); a program whose script
# imports much names those modules with `preload`.
_PRELOADED = ["__main__", "torch", "search.imaging"]
processes.set_forkserver_preload(_PRELOADED)
_slots = threading.BoundedSemaphore(CONCURRENT_DECODES)
T = TypeVar("T")


def preload(*modules: str) -> None:
    """Have the fork server import `modules` too, once, before it forks children (for a server
    started after this call)."""
    _PRELOADED.extend(name for name in modules if name not in _PRELOADED)
    processes.set_forkserver_preload(_PRELOADED)


def start_fork_server() -> None:
    """Start the fork server and its imports now, so that they overlap the caller's own work
    (loading a model) instead of delaying the first child."""
    forkserver.ensure_running()


def limit_resources(memory: int = DECODE_MEMORY, cpu_seconds: int | None = None) -> None:
    """Called in a child: cap its address space at what it has mapped now plus `memory` (an
    allocation past it fails with MemoryError), its CPU time (past it, SIGXCPU ends it), and
    torch to one thread: children run side by side, one a core."""
    import torch  # preloaded

    torch.set_num_threads(1)
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + memory, mapped + memory))
    if cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


class StderrCapture:
    """A child's file descriptor 2 sent to a file: C libraries (libtiff, libjpeg) print their
    warnings there, below Python's reach. The parent logs what `drain` returns at debug level."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (open for the life of the child)
        os.dup2(self._file.fileno(), 2)

    def drain(self) -> str:
        self._file.seek(0)
        text = self._file.read().decode(errors="replace").strip()
        self._file.seek(0)
        self._file.truncate()
        return text


def run_bounded(function: Callable[..., T], *args: Any, memory: int = DECODE_MEMORY) -> T:
    """`function(*args)` in a fresh child with capped memory and time; its ImageError is raised
    here, and a child that dies or overruns becomes an ImageError too."""
    with _slots:
        receive, send = processes.Pipe(duplex=False)
        child = processes.Process(target=_child, args=(send, memory, function, args), daemon=True)
        child.start()
        send.close()
        try:
            ok, value = _answer(child, receive)
        finally:
            receive.close()
            if child.is_alive():
                child.kill()
            child.join()
    if not ok:
        raise value
    return value


def _answer(child: Any, receive: Connection) -> tuple[bool, Any]:
    # The CPU limit stops a busy child; the wall-clock bound stops one that sleeps or waits.
    if not receive.poll(DECODE_SECONDS * 2):
        child.kill()
        raise ImageError("the decoder took too long")
    try:
        ok, value, noise = receive.recv()
    except EOFError:
        child.join()
        raise ImageError(f"the decoder crashed ({describe_exit(child.exitcode)})") from None
    if noise:
        log.debug("decoder output: %s", noise)
    return ok, value


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        if -exitcode == signal.SIGXCPU:
            return "over its CPU time limit"
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _child(
    send: Connection, memory: int, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    limit_resources(memory, cpu_seconds=DECODE_SECONDS)
    stderr = StderrCapture()
    try:
        result: tuple[bool, Any] = (True, function(*args))
    except ImageError as exc:
        result = (False, exc)
    except MemoryError:
        result = (False, ImageError("cannot decode image (over the decoder's memory limit)"))
    send.send((*result, stderr.drain()))
