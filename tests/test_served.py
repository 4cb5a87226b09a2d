"""`clipsearch search` through a `clipsearch serve` running on the same collection: the same
answers from the server's loaded model, and the command's own search whenever no server is there
to give them."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from clipsearch.served import SERVER_FILE, announced, server_url
from tests.conftest import TINY_ARGS, free_port, one_line, run_cli, serving

ANSWERED = "answered by the server at"


def search(data: Path, *args: str) -> tuple[str, str]:
    done = run_cli("search", *args, "--data-dir", str(data))
    return done.stdout, done.stderr


def ranked(stdout: str) -> list[tuple[int, float]]:
    return [(hit["id"], hit["score"]) for hit in json.loads(stdout)["results"]]


def test_a_search_is_answered_by_the_server_running_on_its_collection(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    run_cli("index", str(photos), *TINY_ARGS, "--data-dir", str(data), "--workers", "1")
    text = ("a red apple + sky", "-k", "5", "--ext", "jpg,png")
    image = ("--image", str(next(photos.glob("*.jpg"))), "-k", "3")
    here = {query: search(data, *query, "--json") for query in (text, image)}
    listed, _ = search(data, *text)

    with serving(data) as (base, process):
        assert server_url(data) == base
        for query, (stdout, stderr) in here.items():
            served, said = search(data, *query, "--json")
            assert f"{ANSWERED} {base}" in said and ANSWERED not in stderr
            assert ranked(served) == ranked(stdout)
        # Absolute paths, as the command prints them itself, even through an HTTP proxy.
        with monkeypatch.context() as env:
            env.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
            assert search(data, *text) == (listed, f"clipsearch: {ANSWERED} {base}\n")
        missing = run_cli("search", "--like", "999999", "--data-dir", str(data), check=False)
        assert missing.returncode == 1
        assert one_line(missing.stderr) == "Error: no image with id 999999"
        # A device named on the command line is used here, not the server's.
        assert ANSWERED not in search(data, *text, "--device", "cpu")[1]

        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert (data / SERVER_FILE).exists() and server_url(data) is None
        stdout, stderr = search(data, *text, "--json")
        assert ranked(stdout) == ranked(here[text][0]) and ANSWERED not in stderr

    # The next server takes over the file left behind, and names the path it is mounted at.
    with serving(data, "--url-prefix", "/photos") as (base, process):
        assert server_url(data) == f"{base}/photos"
        assert search(data, *text) == (listed, f"clipsearch: {ANSWERED} {base}/photos\n")
        process.send_signal(signal.SIGTERM)  # as a service manager stops it
        assert process.wait(timeout=30) == 0
    assert not (data / SERVER_FILE).exists()


class NotClipsearch(http.server.BaseHTTPRequestHandler):
    """Whatever else may listen where a server was: it answers, with something else."""

    def do_POST(self) -> None:
        body = json.dumps({"results": [{"id": "x"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("listening", [False, True], ids=["nothing", "something else"])
def test_a_server_that_gives_no_answer_leaves_the_search_to_the_command(
    tmp_path: Path, photos: Path, listening: bool
) -> None:
    data = tmp_path / "data"
    run_cli("index", str(photos), *TINY_ARGS, "--data-dir", str(data), "--workers", "1")
    with contextlib.ExitStack() as stack:
        port = free_port()
        if listening:
            other = http.server.ThreadingHTTPServer(("127.0.0.1", port), NotClipsearch)
            stack.callback(other.server_close)
            threading.Thread(target=other.serve_forever, daemon=True).start()
            stack.callback(other.shutdown)
        stack.enter_context(announced(data, "0.0.0.0", port))
        assert server_url(data) is not None
        stdout, stderr = search(data, "a boat", "--json")
    assert json.loads(stdout)["count"] > 0 and ANSWERED not in stderr
    assert not (data / SERVER_FILE).exists()


def test_the_first_server_of_a_collection_keeps_its_announcement(tmp_path: Path) -> None:
    with announced(tmp_path, "0.0.0.0", 8001):
        with announced(tmp_path, "::", 8002):
            assert server_url(tmp_path) == "http://127.0.0.1:8001"
        assert server_url(tmp_path) == "http://127.0.0.1:8001"
    assert server_url(tmp_path) is None
    with announced(tmp_path, "::", 8002):
        assert server_url(tmp_path) == "http://[::1]:8002"


def test_an_announcement_from_another_machine_or_not_a_file_is_not_followed(
    tmp_path: Path,
) -> None:
    with announced(tmp_path, "127.0.0.1", 8001):
        said = json.loads((tmp_path / SERVER_FILE).read_text())
        (tmp_path / SERVER_FILE).write_text(json.dumps({**said, "host": "elsewhere"}))
        assert server_url(tmp_path) is None  # a collection on a disk shared with that machine
    os.mkfifo(tmp_path / SERVER_FILE)
    assert server_url(tmp_path) is None  # at once: reading it would wait for a writer
