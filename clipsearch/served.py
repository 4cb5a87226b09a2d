"""Searching through a `clipsearch serve` that runs on the same collection.

A one-shot `clipsearch search` spends seconds importing torch and loading the model for a query
that then takes milliseconds; a running server has both ready. So a server writes where it
listens into its collection's directory, and `clipsearch search` asks it when it finds one: the
same request body, the same results, the same JSON, in an eighth of the time.

The server holds an exclusive lock on that file for as long as it runs, and the kernel drops the
lock with the process, kill -9 included: a file whose lock a reader can take is stale. No pid to
check, and no port that another program may have taken since.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from search.errors import ClipsearchError
from search.storage import read_small_text

SERVER_FILE = "server.json"
ASK_TIMEOUT_SECONDS = 10  # a server busier than this: the command loads the model itself
_LOCK_TRIES = 20  # a reader holds the lock for microseconds; another server for good
_MAX_READ_BYTES = 4096  # the server file, or an error's body
_HOST = socket.gethostname()


@contextlib.contextmanager
def announced(data_dir: Path, host: str, port: int, prefix: str = "") -> Iterator[None]:
    """Tell searches on `data_dir` that a server listens on host:port, its app mounted at
    `prefix` ("" for the root), while the block runs.
    Nothing is announced where the directory cannot be written (the server still serves) or
    while another server announces the collection."""
    handle = _claimed(data_dir / SERVER_FILE, _url(host, port) + prefix)
    if handle is None:
        yield
        return
    with handle:
        try:
            yield
        finally:
            (data_dir / SERVER_FILE).unlink(missing_ok=True)


def _claimed(path: Path, url: str) -> IO[str] | None:
    """The server file, locked and holding `url`; None where it cannot be."""
    try:
        handle = path.open("a+", encoding="utf-8")
    except OSError:
        return None
    try:
        for _ in range(_LOCK_TRIES):
            if _locked(handle, fcntl.LOCK_EX):
                handle.truncate(0)
                handle.write(json.dumps({"url": url, "host": _HOST, "pid": os.getpid()}))
                handle.flush()
                return handle
            time.sleep(0.005)
    except OSError:  # a full disk: the file says nothing, and its lock goes with the handle
        pass
    handle.close()
    return None


def _locked(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_url(data_dir: Path) -> str | None:
    """The address of a server running on the collection in `data_dir`, if one announced itself
    on this machine (a collection on a shared disk may be served from another)."""
    path = data_dir / SERVER_FILE
    try:
        said = json.loads(read_small_text(path, _MAX_READ_BYTES))  # never a FIFO's wait
        with path.open(encoding="utf-8") as handle:
            if _locked(handle, fcntl.LOCK_SH):
                return None  # nobody holds it: that server has stopped
        url, host = said["url"], said["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    here = host == _HOST and isinstance(url, str) and url.startswith("http://")
    return url if here else None


def ask(url: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The server's answer to the search `body` (the API's JSON request; bytes are sent in
    base64), or None where it gives none: it stopped since, it is too busy, it failed. A 4xx is
    an answer: the server read the request as this release does (a missing image, say)."""
    request = urllib.request.Request(
        f"{url}/api/search",
        json.dumps(body, default=_base64).encode(),
        {"Content-Type": "application/json"},
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with direct.open(request, timeout=ASK_TIMEOUT_SECONDS) as response:
            return _page(json.load(response))
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise ClipsearchError(_error(exc)) from None
        return None
    except (OSError, ValueError):
        return None


def _page(answer: object) -> dict[str, Any] | None:
    """`answer` if it has the API's shape as far as the command reads it, else None (whatever
    listens there, it is not a clipsearch server of this release)."""
    if not isinstance(answer, dict):
        return None
    results = answer.get("results")
    return answer if isinstance(results, list) and all(map(_is_result, results)) else None


def _is_result(result: object) -> bool:
    return (
        isinstance(result, dict)
        and isinstance(result.get("id"), int)
        and isinstance(result.get("score"), int | float)
        and isinstance(result.get("path"), str)
    )


def _base64(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON")


def _error(exc: urllib.error.HTTPError) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads(exc.read(_MAX_READ_BYTES))["error"])
    return f"the server at {exc.url} answered {exc.code}"
