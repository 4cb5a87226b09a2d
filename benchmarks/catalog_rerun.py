"""A shop's nightly run over the catalog it has indexed: `clipsearch index --catalog` on N
products whose images are all indexed, once with nothing changed and once with 1% of the prices
changed; the command's seconds and peak memory, this tree and --baseline TREE alternately.

    git worktree add /tmp/prev f6d573d
    python benchmarks/catalog_rerun.py --n 1000000 --baseline /tmp/prev

The images are empty files with random 512-d vectors (ViT-B-32's), written by the older
tree's writer (a newer schema is refused by an older release): the runs read no image. A first
run, not timed, tags them all, as happens once per collection; each tree then runs on a copy
of that collection, each price run turning the prices the other way, so each side updates
the same 1% of the products. Last, for each tree, a server (its SearchEngine) follows one more
price run: the seconds it takes to take the new generation in, and its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import THIS_TREE, environment, ratio, run_json
from benchmarks.catalog_read import write_catalog

CHANGED_EVERY = 100  # 1% of the prices change between the two catalogs

# Run in a process of its own, in the older tree: a process's peak memory counts its
# parent's at the fork, so the one that starts the measured commands stays small.
BUILD = """
import sys
from pathlib import Path
import numpy as np
from indexer.catalog_file import read_catalog
from indexer.items import Encoded
from indexer.plan import Sources, make_plan
from indexer.writer import Writer
from search.collection import Collection
from search.spec import ModelSpec
data, catalog = Path(sys.argv[1]), Path(sys.argv[2])
rows = read_catalog(catalog)
attributes = {(str(rows.root), key): value for key, value in rows.attributes.items()}
sources = Sources([rows.root], rows.files, rows.unreadable, attributes)
collection = Collection.create_or_open(data, ModelSpec.from_args("ViT-B-32", "none"))
rng = np.random.default_rng(0)
with collection.writer():
    with collection.catalog.sessions() as session:
        plan = make_plan(session, sources)
    writer = Writer(collection, plan, sources, lambda seen: None)
    with writer.saving():
        for start in range(0, len(plan.todo), 1024):
            files = plan.todo[start : start + 1024]
            vectors = rng.standard_normal((len(files), 512)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            hashes = [f"{start + i:064x}" for i in range(len(files))]
            batch = zip(files, hashes, vectors, strict=True)
            writer.write([Encoded(f, h, v, 640, 480, None) for f, h, v in batch])
"""

FOLLOW = """
import json, shutil, subprocess, sys, time
from pathlib import Path
from search.collection import Collection
from search.engine import SearchEngine
data, catalog, prices = sys.argv[1:4]
collection = Collection.open(Path(data))
engine = SearchEngine(collection, collection.encoder("cpu"))
shutil.copyfile(prices, catalog)
index = ["index", "--data-dir", data, "--catalog", catalog]
subprocess.run([sys.executable, "-m", "clipsearch", *index], check=True, capture_output=True)
started = time.perf_counter()
engine.refresh()
seconds = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"seconds": seconds, "peak_mb": int(status["VmHWM"].split()[0]) // 1024}))
"""


def shop(folder: Path, n: int) -> tuple[Path, Path]:
    """A catalog of `n` products with an empty file for each image, and the same catalog
    with 1% of its prices changed."""
    catalog = folder / "products.csv"
    (folder / "img").mkdir(parents=True)
    write_catalog(catalog, n)
    for i in range(n):
        (folder / "img" / f"{i}.jpg").touch()
    repriced = folder / "repriced.csv"
    with open(catalog, encoding="utf-8") as lines, open(repriced, "w", encoding="utf-8") as out:
        out.write(next(lines))
        for i, line in enumerate(lines):
            fields = line.split(",")  # image,sku,title,price,category,brand: no quoted commas
            if i % CHANGED_EVERY == 0:
                fields[3] = f"{float(fields[3]) + 1:.2f}"
            out.write(",".join(fields))
    return catalog, repriced


def rerun(tree: Path, data: Path, catalog: Path) -> dict:
    """`clipsearch index --catalog` from `tree`: its seconds, peak memory and summary."""
    command = [sys.executable, "-m", "clipsearch", "index", "--data-dir", str(data)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--catalog", str(catalog), "--json"],
        cwd=tree,
        env=environment(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's own peak memory
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{tree}: {' '.join(command)} failed ({process.returncode})")
    summary = json.loads(output.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss // 1024, "summary": summary}


def measure(trees: dict[str, Path], folder: Path, n: int, runs: int) -> dict[str, dict]:
    """Each tree's runs on its own copy of the collection, alternating: the catalog as its
    copy has it, then with the prices turned."""
    catalog, repriced = shop(folder / "shop", n)
    original = folder / "original.csv"
    shutil.copyfile(catalog, original)
    prices = [original, repriced]
    oldest, built = list(trees.values())[-1], folder / "built"
    build = [sys.executable, "-c", BUILD, str(built), str(catalog)]
    subprocess.run(build, cwd=oldest, env=environment(oldest), check=True)
    rerun(oldest, built, catalog)  # tags every image: once per collection, not measured
    data = {name: shutil.copytree(built, folder / name) for name in trees}
    turned = dict.fromkeys(trees, 0)  # which of `prices` each copy holds
    taken: dict[str, dict[str, list[dict]]] = {
        name: {"unchanged": [], "prices": []} for name in trees
    }
    for _ in range(runs):
        for name, tree in trees.items():
            shutil.copyfile(prices[turned[name]], catalog)
            taken[name]["unchanged"].append(rerun(tree, data[name], catalog))
            turned[name] = 1 - turned[name]
            shutil.copyfile(prices[turned[name]], catalog)
            taken[name]["prices"].append(rerun(tree, data[name], catalog))
            last = {case: done[-1] for case, done in taken[name].items()}
            print(json.dumps({name: last}), file=sys.stderr)
    result = {
        name: {case: _median(runs, n) for case, runs in cases.items()}
        for name, cases in taken.items()
    }
    for name, tree in trees.items():
        shutil.copyfile(prices[turned[name]], catalog)
        command = (str(data[name]), str(catalog), str(prices[1 - turned[name]]))
        serving = run_json(tree, "-c", FOLLOW, *command)
        result[name]["server"] = {**serving, "seconds": round(serving["seconds"], 4)}
    return result


def _median(runs: list[dict], n: int) -> dict:
    for run in runs:
        assert run["summary"]["unchanged"] == n and run["summary"]["added"] == 0, run["summary"]
    return {
        "seconds": round(statistics.median(run["seconds"] for run in runs), 1),
        "peak_mb": max(run["peak_mb"] for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="the release to compare, a git worktree")
    args = parser.parse_args()
    trees = {"this": THIS_TREE, **({"baseline": args.baseline} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as folder:
        result: dict = {"n": args.n, **measure(trees, Path(folder), args.n, args.runs)}
    if args.baseline:
        result["ratios"] = {
            case: {
                "seconds": ratio(
                    result["baseline"][case]["seconds"], result["this"][case]["seconds"]
                ),
                "peak_mb": ratio(
                    result["baseline"][case]["peak_mb"], result["this"][case]["peak_mb"]
                ),
            }
            for case in ("unchanged", "prices", "server")
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
