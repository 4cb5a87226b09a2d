"""Writing into a collection's directory so that a failure is one clear line and leaves no
temporary file behind: a full disk, a read-only mount, a quota."""

from __future__ import annotations

import contextlib
import errno
import stat
from collections.abc import Iterator
from pathlib import Path

from search.errors import StorageError


@contextlib.contextmanager
def writing(what: str, tmp: Path | None = None) -> Iterator[None]:
    """Around a write of `what` ("saving the vector index"), whose partial output is `tmp`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:  # faiss reports a failed write as a RuntimeError
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise StorageError(f"{_why(exc)} while {what}") from None


def _why(exc: BaseException) -> str:
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):
        return "no space left on device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).strip().split("\n")[0] or type(exc).__name__


def read_small_text(path: Path, limit: int) -> str:
    """A small UTF-8 file a user writes (an ignore file, a tag vocabulary). A FIFO or device by
    that name would block the reader, a huge file fill its memory: both are refused as OSError,
    like a file that cannot be read."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise OSError(0, "not a regular file")
    if info.st_size > limit:
        raise OSError(0, f"larger than {limit:,} bytes")
    return path.read_text(encoding="utf-8")
