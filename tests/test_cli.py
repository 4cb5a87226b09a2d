"""The `clipsearch` command as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_ARGS, one_line, run_cli


def test_index_search_stats_round_trip(tmp_path: Path, photos: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    (photos / "red-apple.jpg").rename(photos / "red\napple\x1b[2J.jpg")  # a stranger's name
    first = run_cli("index", str(photos), *TINY_ARGS, *data, "--json", "--workers", "1")
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"scanned", "added", "updated", "unchanged", "removed", "failed"}
    assert set(summary) >= {"seconds", "images_per_second"}
    assert (summary["scanned"], summary["added"], summary["failed"]) == (12, 12, 0)
    assert "RANDOM WEIGHTS" in first.stderr
    # The command exits with its catalog closed, its write-ahead log folded into the file.
    assert not (tmp_path / "data" / "catalog.sqlite-wal").exists()

    again = json.loads(run_cli("index", str(photos), *data, "--json").stdout.splitlines()[-1])
    assert (again["added"], again["unchanged"]) == (0, 12)

    found = json.loads(run_cli("search", "a red apple", "-k", "5", *data, "--json").stdout)
    scores = [r["score"] for r in found["results"]]
    assert found["count"] == 5 and scores == sorted(scores, reverse=True)
    assert found["model"] == "tiny-clip/none" and found["notice"] is None
    first_id = found["results"][0]["id"]
    # A query the English model cannot read is answered, with a word on why it finds little.
    chinese = run_cli("search", "红色的苹果", "-k", "12", *data)
    assert len(chinese.stdout.splitlines()) == 12  # a name's newline is written \n
    assert "/red\\napple\\x1b[2J.jpg" in chinese.stdout
    assert "clipsearch: this collection's model reads English only:" in chinese.stderr

    like = json.loads(run_cli("search", "--like", str(first_id), *data, "--json").stdout)
    assert first_id not in [r["id"] for r in like["results"]]
    args = ("search", "--like", str(first_id), "--include-query", *data, "--json")
    itself = json.loads(run_cli(*args).stdout)
    assert itself["results"][0]["id"] == first_id and itself["results"][0]["score"] >= 0.99

    syntax = json.loads(
        run_cli("search", "apple + 2:sky - boat", "-k", "3", *data, "--json").stdout
    )
    assert syntax["count"] == 3

    stats = json.loads(run_cli("stats", "--json", *data).stdout)
    assert stats["images"] == 12 and stats["index"]["vectors"] == 12


def test_expected_errors_are_one_line_without_traceback(tmp_path: Path, photos: Path) -> None:
    missing = run_cli("search", "dog", "--data-dir", str(tmp_path / "none"), check=False)
    assert missing.returncode == 1
    assert "no collection" in missing.stderr and "Traceback" not in missing.stderr

    offline = run_cli(
        "index",
        str(photos),
        "--data-dir",
        str(tmp_path / "d"),
        "--pretrained",
        "laion2b_s34b_b79k",
        check=False,
    )
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert "--pretrained FILE" in offline.stderr

    usage = run_cli("search", "-k", "abc", check=False)
    assert usage.returncode == 2

    no_query = run_cli("search", "--data-dir", str(tmp_path), check=False)
    assert no_query.returncode == 2


def test_the_console_script_runs_and_its_top_level_imports_no_command_line() -> None:
    """Each decode worker runs the program's script again, as `__mp_main__` (search/sandbox.py):
    the installed `clipsearch` script must leave the command line, and torch, unimported."""
    script = Path(sys.executable).parent / "clipsearch"
    assert script.exists(), "install the project (pip install -e .) to get its console script"
    usage = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "index" in usage.stdout
    as_a_worker = (
        f"import runpy, sys; runpy.run_path({str(script)!r}, run_name='__mp_main__'); "
        "print(sorted(m for m in ('clipsearch.cli', 'torch') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", as_a_worker], capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr


def test_only_a_search_with_an_image_starts_the_decoders(tmp_path: Path, photos: Path) -> None:
    """A text query decodes nothing: starting the decoders' fork server (torch imported again,
    in another process) had cost a text search 0.67 of its 4.6 s on 2 cores. With an image it
    starts before the model loads, so that the two overlap."""
    data = ["--data-dir", str(tmp_path / "data")]
    run_cli("index", str(photos), *TINY_ARGS, *data)
    count_children = "sum(len(open(f).read().split()) for f in glob('/proc/self/task/*/children'))"
    image = ["--image", str(photos / "red-apple.jpg")]
    for query, starts in ((["a red apple"], False), (image, True)):
        search = ["search", *query, *data]
        script = (
            "from glob import glob; from clipsearch.cli import cli; "
            f"cli.main({search!r}, standalone_mode=False); print({count_children})"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        # The fork server, and the resource tracker it starts first.
        assert (int(run.stdout.splitlines()[-1]) > 0) is starts


def test_a_rerun_naming_the_collections_own_model_leaves_open_clip_unimported(
    tmp_path: Path,
) -> None:
    """The name and tag were checked with open_clip when the collection recorded them; checking
    them again would import it, 3 s of a re-run that otherwise takes half a second."""
    empty, data = tmp_path / "photos", str(tmp_path / "data")
    empty.mkdir()
    named = ["index", str(empty), "--data-dir", data, "--model", "ViT-B-32", "--pretrained", "none"]
    run_cli(*named)
    rerun = (
        f"import sys; from clipsearch.cli import cli; cli.main({named!r}, standalone_mode=False); "
        "print(sorted(m for m in ('open_clip', 'torch') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", rerun], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-1] == "[]"

    other_tag = [*named[:-1], "no-such-tag"]
    assert "nor a known tag" in one_line(run_cli(*other_tag, check=False).stderr)
