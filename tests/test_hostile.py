"""Tried as a hostile stranger would: bombs in uploads and folders, decoders that die or hang,
damaged, read-only and full collections, and the first run with no network."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from indexer import pipeline
from indexer.items import Failed
from indexer.pipeline import KnownContent, Loaded, load_batches
from indexer.scan import FoundFile
from search.collection import Collection
from search.errors import ImageError
from search.imaging import InputLayout, decode_for_model
from search.sandbox import run_bounded
from search.vectors import VectorIndex
from tests.conftest import (
    PYTHON,
    TINY_ARGS,
    draw_photos,
    in_namespace,
    one_line,
    read_only_mount,
    run_cli,
    serving,
)
from tests.hostile import huge_png_header, memory_hungry_png, nested_bomb_icns


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of 12 photos, indexed by the CLI (so no connection of ours stays open)."""
    root = tmp_path_factory.mktemp("small")
    draw_photos(root / "photos", 12, seed=3)
    run_cli("index", str(root / "photos"), *TINY_ARGS, "--data-dir", str(root / "data"), "-q")
    return root


def test_a_stranger_cannot_take_a_real_server_down(small: Path) -> None:
    """Bombs uploaded, 300 connections left half-open (waitress's default of 100 stopped it
    answering anyone), and a body announced at 1 GB (read to a temporary file before)."""
    with serving(small / "data") as (base, process):
        port = int(base.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of it
        assert requests.get(f"{base}/healthz", timeout=10).ok
        huge = socket.create_connection(("127.0.0.1", port), timeout=10)
        huge.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        assert huge.recv(64).startswith(b"HTTP/1.1 413 ")
        for sock in [*held, huge]:
            sock.close()
        before = rss_kib(process.pid)
        started = time.monotonic()
        for name, data in (
            ("holiday.png", nested_bomb_icns()),
            ("huge.png", huge_png_header(60_000, 60_000)),
        ):
            answer = requests.post(f"{base}/api/search", files={"image": (name, data)}, timeout=60)
            assert answer.status_code == 400 and "error" in answer.json(), answer.text
        # Legal, but too hungry for a decoder capped at 3 GB? No: decoded in a child.
        hungry = requests.post(
            f"{base}/api/search", files={"image": ("big.png", memory_hungry_png())}, timeout=60
        )
        assert hungry.status_code == 200
        assert time.monotonic() - started < 30
        assert requests.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
        grown = rss_kib(process.pid, "VmHWM") - before
        assert grown < 200 * 1024, f"the server grew by {grown} KiB"


def test_a_decoder_over_its_memory_cap_is_a_bad_image_not_a_dead_process() -> None:
    layout = InputLayout(64)
    with pytest.raises(ImageError, match="memory"):
        run_bounded(decode_for_model, memory_hungry_png(), layout, memory=100 << 20)
    assert run_bounded(decode_for_model, memory_hungry_png(), layout).width == 6000


def test_a_nested_bomb_in_a_folder_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    draw_photos(folder, 4, seed=5)
    (folder / "holiday.png").write_bytes(nested_bomb_icns())
    data = ["--data-dir", str(tmp_path / "data")]
    result = run_cli("index", str(folder), *TINY_ARGS, *data, "--json", "--workers", "2", "-q")
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["added"], summary["failed"]) == (4, 1)
    assert "Traceback" not in result.stderr
    failure = json.loads(run_cli("stats", "--json", *data).stdout)["failures"][0]
    assert failure["path"] == "holiday.png" and "not a readable image" in failure["reason"]
    assert "0x" not in failure["reason"]  # no object reprs in a reason


def workers_of(pid: int) -> list[int]:
    """The decode workers of an indexer: children of its fork server, which is its child."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(fields["Pid"]))
    return [worker for server in children.get(pid, []) for worker in children.get(server, [])]


def decode_workers(indexer: subprocess.Popen[str], count: int) -> list[int]:
    """The indexer's decode workers, once `count` of them have lived for 0.1 s: the fork server
    has other children that come and go (importing torch runs `ldconfig -p`, through
    cuda.pathfinder's ctypes.util.find_library)."""
    deadline = time.monotonic() + 120
    while True:
        assert indexer.poll() is None and time.monotonic() < deadline, "no workers seen"
        seen = set(workers_of(indexer.pid))
        if len(seen) >= count:
            time.sleep(0.1)
            if len(lasting := seen & set(workers_of(indexer.pid))) >= count:
                return sorted(lasting)
        time.sleep(0.02)


def test_a_killed_decode_worker_is_replaced_and_the_run_completes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for number in range(160):  # PNGs of some size: the run lasts long enough to kill a worker
        Image.effect_noise((640, 480), 40 + number % 50).convert("RGB").save(
            folder / f"p{number:03d}.png"
        )
    args = [*TINY_ARGS, "--data-dir", str(tmp_path / "data"), "--workers", "2", "--json"]
    command = [sys.executable, "-m", "clipsearch", "index", str(folder), *args]
    indexer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.kill(decode_workers(indexer, 2)[0], signal.SIGKILL)
    stdout, stderr = indexer.communicate(timeout=300)
    assert indexer.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert (summary["added"], summary["failed"]) == (160, 0)


@pytest.mark.parametrize("batch_size", [2, 8])  # chunks of 1 file, and 1 chunk of 4 files
def test_a_file_that_hangs_its_decoder_is_retried_alone_then_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    monkeypatch.setattr(pipeline, "CHUNK_SECONDS", 1.5)
    paths = draw_photos(tmp_path, 3, seed=9)
    os.mkfifo(tmp_path / "stuck.jpg")  # reading it blocks forever, like a hung decoder
    files = [FoundFile(str(tmp_path), p.name, p.stat().st_size, 0) for p in paths]
    files.insert(1, FoundFile(str(tmp_path), "stuck.jpg", 0, 0))
    batches = load_batches(files, InputLayout(64), KnownContent([]), batch_size, 1)
    items = [item for batch in batches for item in batch]
    assert sorted(item.file.path for item in items) == sorted(file.path for file in files)
    failed = [item for item in items if isinstance(item, Failed)]
    assert [item.file.path for item in failed] == ["stuck.jpg"]
    assert failed[0].reason == "the decoder crashed (took too long)"
    assert sum(isinstance(item, Loaded) for item in items) == 3


def test_a_read_only_collection_is_searched_and_served_as_a_writable_one(small: Path) -> None:
    data = small / "data"
    query = {"q": "a photo", "k": 5}
    with serving(data) as (base, _):
        writable = requests.get(f"{base}/api/search", params=query, timeout=30).json()
    read_only = read_only_mount(data)
    listing = sorted(os.listdir(data))
    with serving(data, inside=read_only) as (base, _):
        served = requests.get(f"{base}/api/search", params=query, timeout=30).json()
        thumb = requests.get(f"{base}/thumbs/{served['results'][0]['id']}", timeout=30)
        assert requests.get(f"{base}/api/stats", timeout=30).json()["images"] == 12
    assert [r["id"] for r in served["results"]] == [r["id"] for r in writable["results"]]
    assert [r["score"] for r in served["results"]] == [r["score"] for r in writable["results"]]
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    cli = in_namespace(f"{read_only} {PYTHON} search 'a photo' -k 5 --json --data-dir {data}")
    assert cli.returncode == 0, cli.stderr
    assert [r["id"] for r in json.loads(cli.stdout)["results"]] == [
        r["id"] for r in writable["results"]
    ]
    index = in_namespace(f"{read_only} {PYTHON} index {small / 'photos'} --data-dir {data}")
    assert index.returncode == 1 and "read-only" in one_line(index.stderr)
    assert sorted(os.listdir(data)) == listing  # nothing was written


def test_a_damaged_catalog_is_one_line_and_a_damaged_index_is_rebuilt(
    small: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "catalog-broken"
    subprocess.run(["cp", "-r", str(small / "data"), str(broken)], check=True)
    catalog = broken / "catalog.sqlite"
    os.truncate(catalog, catalog.stat().st_size // 2)
    for command in (["stats"], ["search", "a photo"], ["index", str(small / "photos")]):
        result = run_cli(*command, "--data-dir", str(broken), "-q", check=False)
        assert result.returncode == 1
        assert "is damaged" in one_line(result.stderr) and str(catalog) in result.stderr

    rebuilt = tmp_path / "index-broken"
    subprocess.run(["cp", "-r", str(small / "data"), str(rebuilt)], check=True)
    (index,) = rebuilt.glob("vectors-*.faiss")
    os.truncate(index, 100)
    found = run_cli("search", "a photo", "-k", "12", "--json", "--data-dir", str(rebuilt))
    assert json.loads(found.stdout)["count"] == 12
    assert len(VectorIndex.load(index)) == 12  # re-saved whole
    assert "Traceback" not in found.stderr


def test_a_full_disk_is_one_line_leaves_no_temporary_file_and_keeps_every_batch(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    draw_photos(photos, 300, seed=11)
    disk = tmp_path / "disk"
    disk.mkdir()
    index = f"{PYTHON} index {photos} {shlex.join(TINY_ARGS)} --data-dir {disk}/data --json"
    index += " --batch-size 16 --workers 1 -q"
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
        {index} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc
        ls -A {disk}/data > {tmp_path}/files
        {PYTHON} stats --json --data-dir {disk}/data > {tmp_path}/kept.json
        mount -o remount,size=64m {disk}
        {index} > {tmp_path}/second.out 2> {tmp_path}/second.err
    """
    result = in_namespace(script)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "first.rc").read_text().strip() == "1"
    assert "no space left on device" in one_line((tmp_path / "first.err").read_text())
    assert not [name for name in (tmp_path / "files").read_text().split() if "tmp" in name]
    kept = json.loads((tmp_path / "kept.json").read_text())["images"]
    assert 0 < kept < 300  # some batches committed before the disk filled
    second = json.loads((tmp_path / "second.out").read_text().splitlines()[-1])
    assert (second["added"], second["unchanged"], second["failed"]) == (300 - kept, kept, 0)


def test_the_first_run_offline_says_what_works_and_does_not_trap_the_collection(
    tmp_path: Path, photos: Path
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    started = time.monotonic()
    first = run_cli("index", str(photos), *data, "-q", check=False)
    assert first.returncode == 1 and time.monotonic() - started < 60
    assert "--pretrained none" in one_line(first.stderr)
    second = run_cli("index", str(photos), *TINY_ARGS, *data, "--json", "-q")
    assert json.loads(second.stdout.splitlines()[-1])["added"] == 12
    assert Collection.open(tmp_path / "data").spec.architecture == "tiny-clip"


def test_usage_errors_exit_2_before_any_model_loads(small: Path) -> None:
    usage = [
        ["--date-from", "2024-13-01"],
        ["--attr", "x"],
        ["--attr", "size=1", "--attr", "attr_size=2"],  # one name, two values
        ["-k", "0"],
        ["--collapse", "2"],
    ]
    for bad in usage:
        result = run_cli("search", "x", *bad, "--data-dir", str(small / "data"), check=False)
        assert result.returncode == 2, (bad, result.stderr)
        assert "RANDOM WEIGHTS" not in result.stderr  # the model was never built
    for prefix in ("/a b", "/../etc", "/shop?x=1"):
        result = run_cli(
            "serve", "--url-prefix", prefix, "--data-dir", str(small / "data"), check=False
        )
        assert result.returncode == 2 and "--url-prefix" in result.stderr, (prefix, result.stderr)
