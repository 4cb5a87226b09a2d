"""The release before a change, run from a git worktree in the same benchmark run, so that every
figure is printed beside the one it is compared against:

    git worktree add /tmp/prev 42828fa          # the first release
    python benchmarks/query_latency.py --n 1000000 --baseline /tmp/prev

Each tree runs in its own process with its own packages first on the path, on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

THIS_TREE = Path(__file__).resolve().parent.parent
Measured = TypeVar("Measured")


def environment(tree: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (else this process's environment) with `tree` first on the path, offline."""
    env = dict(os.environ if base is None else base, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    return env


def start(tree: Path, *args: str) -> subprocess.Popen[str]:
    """`python ARGS` inside `tree`, in its own session so that it can be stopped with its
    children."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=tree,
        env=environment(tree),
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_json(tree: Path, *args: str, base: Mapping[str, str] | None = None) -> dict:
    """`python ARGS` inside `tree`, in `environment(tree, base)`; its last line of output is the
    JSON it reports."""
    command = [sys.executable, *args]
    env = environment(tree, base)
    done = subprocess.run(command, cwd=tree, env=env, text=True, capture_output=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(new: float, old: float) -> float:
    return round(new / old, 2) if old else float("inf")


def alternating(
    measure: Callable[[Path], Measured], baseline: Path, runs: int
) -> tuple[list[Measured], list[Measured]]:
    """`measure` of this tree, then of `baseline`, `runs` times: what each gave, in order.
    Alternating spreads a slow spell of the machine over both sides."""
    this, before = [], []
    for _ in range(runs):
        this.append(measure(THIS_TREE))
        before.append(measure(baseline))
    return this, before


def on_a_file(doc: str, name: str, write: Callable[[Path, int], None], measure: str) -> None:
    """A benchmark's main() that writes one file `name` of --n items, then runs the snippet
    `measure` (`python -c`, the file its argument, JSON its last line) in this tree and, given
    --baseline, in that one."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=Path, help="the release to compare, a git worktree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, name)
        write(path, args.n)
        result = {"n": args.n, "this": run_json(THIS_TREE, "-c", measure, str(path))}
        if args.baseline:
            result["baseline"] = run_json(args.baseline, "-c", measure, str(path))
    print(json.dumps(result))
