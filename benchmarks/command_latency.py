"""How long one-shot commands take as a user waits for them, this tree against --baseline TREE,
with the model loaded from a local checkpoint file, as a user with downloaded weights has it:

    git worktree add /tmp/prev f02f3d4
    python benchmarks/command_latency.py --baseline /tmp/prev

The checkpoint holds random ViT-B-32 weights saved with torch.save: loading them costs what real
ones cost. Each tree indexes its own copy of a few generated photos with it, then, alternating,
`--runs` times each: `clipsearch search TEXT`, `clipsearch search --image FILE`, and
`clipsearch serve` from its start until /healthz answers; then `clipsearch search TEXT` again
while each tree's server runs on its collection. Prints one JSON object: each command's seconds
on both sides and the baseline's median over this tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import THIS_TREE, alternating, environment, ratio, start
from benchmarks.make_images import draw

SERVE_WAIT_SECONDS = 120


def save_checkpoint(path: Path, model: str) -> None:
    import open_clip
    import torch

    torch.save(open_clip.create_model(model).state_dict(), path)


def clipsearch(tree: Path, *args: str) -> float:
    """Seconds `clipsearch ARGS` took, from starting Python to its exit."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "clipsearch", *args],
        cwd=tree,
        env=environment(tree),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


@contextlib.contextmanager
def served(tree: Path, data: Path) -> Iterator[float]:
    """`clipsearch serve` of `tree` on `data`, running: the seconds from its start until
    /healthz answered."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    server = start(tree, "-m", "clipsearch", "serve", "--data-dir", str(data), "--port", str(port))
    try:
        while not answers(f"http://127.0.0.1:{port}/healthz"):
            if server.poll() is not None:
                raise SystemExit(f"{tree}: clipsearch serve exited ({server.returncode})")
            if time.perf_counter() - started > SERVE_WAIT_SECONDS:
                raise SystemExit(f"{tree}: clipsearch serve did not answer in time")
            time.sleep(0.02)
        yield time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def serve_ready(tree: Path, data: Path) -> float:
    with served(tree, data) as seconds:
        return seconds


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except OSError:
        return False
    return True


def prepare(root: Path, model: str, data: dict[Path, Path]) -> Path:
    """The checkpoint and the photos, and each tree's collection of them in its `data` folder;
    returns the photos."""
    checkpoint, photos = root / "weights.pt", root / "photos"
    save_checkpoint(checkpoint, model)
    photos.mkdir()
    rng = random.Random(0)
    for number in range(20):
        draw(rng).save(photos / f"{number:02d}.jpg", quality=88)
    for tree, folder in data.items():
        weights = ["--model", model, "--pretrained", str(checkpoint)]
        clipsearch(tree, "index", str(photos), "--data-dir", str(folder), *weights)
    return photos


def compare(timed: Callable[[Path], float], baseline: Path, runs: int) -> dict:
    """`timed` on this tree and `baseline` in turn, `runs` times."""
    this, before = alternating(lambda tree: round(timed(tree), 3), baseline, runs)
    return {
        "seconds": this,
        "baseline_seconds": before,
        "speedup": ratio(statistics.median(before), statistics.median(this)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a worktree to compare with")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    baseline = args.baseline.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = {THIS_TREE: root / "this", baseline: root / "baseline"}
        photos = prepare(root, args.model, data)
        image = str(photos / "00.jpg")
        commands: dict[str, Callable[[Path], float]] = {
            "search_text": lambda tree: clipsearch(
                tree, "search", "a red car", "--data-dir", str(data[tree])
            ),
            "search_image": lambda tree: clipsearch(
                tree, "search", "--image", image, "--data-dir", str(data[tree])
            ),
            "serve_until_healthz": lambda tree: serve_ready(tree, data[tree]),
        }
        result = {
            command: compare(timed, baseline, args.runs) for command, timed in commands.items()
        }
        # Each tree's server running on its collection: this tree's search asks it.
        with served(THIS_TREE, data[THIS_TREE]), served(baseline, data[baseline]):
            result["search_text_beside_a_server"] = compare(
                commands["search_text"], baseline, args.runs
            )
    print(json.dumps({"model": args.model, "checkpoint": "local file", **result}))


if __name__ == "__main__":
    main()
