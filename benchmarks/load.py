"""N concurrent clients against a running `clipsearch serve` for a bounded time: throughput,
latency percentiles and errors, with /healthz under the same load as the baseline.

    clipsearch index /tmp/ten-thousand --data-dir /tmp/load --model ViT-B-32 --pretrained none
    clipsearch serve --data-dir /tmp/load --port 8000 &
    python benchmarks/load.py --url http://127.0.0.1:8000 --clients 8 32 --seconds 30

or, serving the collection itself from this tree and then from the release before (a git
worktree, benchmarks/baseline.py), one after the other on the same data:

    python benchmarks/load.py --serve /tmp/load --baseline /tmp/prev

Each client is a thread with its own keep-alive connection, sending the mix a web page and a
shop backend send: texts (some with negative terms), "more like this" by id, filtered searches,
second pages, and a thumbnail after each search. Any status other than 200 counts as an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import THIS_TREE, ratio, start

WORDS = ["dog", "beach at sunset", "a child playing", "red car", "mountain lake", "market", "snow"]


def request_mix(number: int, total_images: int) -> tuple[str, dict]:
    kind = number % 5
    if kind == 1:
        return "/api/search", {"image_id": 1 + (number * 7919) % total_images, "k": 20}
    if kind == 2:
        return "/api/search", {"q": f"{WORDS[number % 7]} - people", "k": 20, "ext": "jpg"}
    if kind == 3:
        return "/api/search", {"q": WORDS[number % 7], "k": 20, "offset": 20}
    return "/api/search", {"q": f"{WORDS[number % 7]} {number}", "k": 20}


def run(url: str, clients: int, seconds: float, total_images: int, path: str | None) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        number = seed * 100_003
        with requests.Session() as session:
            while time.monotonic() < deadline:
                target, params = (path, {}) if path else request_mix(number, total_images)
                started = time.perf_counter()
                try:
                    response = session.get(url + target, params=params, timeout=60)
                    status = response.status_code
                    if not path and status == 200 and response.json()["results"]:
                        thumb = response.json()["results"][0]["thumbnail_url"]
                        status = session.get(url + thumb, timeout=60).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        errors.append(str(status))
                number += 1

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.monotonic() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }


def measure(url: str, clients: list[int], seconds: float) -> dict:
    total = requests.get(f"{url}/api/stats", timeout=30).json()["images"]
    results = []
    for count in clients:
        baseline = run(url, count, min(5, seconds), total, "/healthz")
        result = {**run(url, count, seconds, total, None), "healthz": baseline}
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    return {"images": total, "runs": results}


def serving(tree: Path, data_dir: Path, clients: list[int], seconds: float) -> dict:
    """Serve `data_dir` with `tree`'s clipsearch, warm it up, measure, stop it."""
    port = 8000 + os.getpid() % 1000
    server = start(
        tree, "-m", "clipsearch", "serve", "--data-dir", str(data_dir), "--port", str(port)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            time.sleep(0.2)
        run(url, 4, 5, 100, None)  # warm-up: model, caches, thread pools
        return measure(url, clients, seconds)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def ratios(this: list[dict], baseline: list[dict]) -> list[dict]:
    return [
        {
            "clients": new["clients"],
            "requests_per_second": ratio(new["requests_per_second"], old["requests_per_second"]),
            "p99_ms": ratio(new["p99_ms"], old["p99_ms"]),
        }
        for new, old in zip(this, baseline, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--serve", type=Path, metavar="DATA_DIR", help="start the server here")
    parser.add_argument("--baseline", type=Path, help="with --serve: the release to compare")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    if not args.serve:
        print(json.dumps(measure(args.url, args.clients, args.seconds)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch, "collection")
        if args.baseline:
            # A copy taken first: this tree upgrades an older collection's schema in place when
            # it opens it, and the release before cannot read a newer schema.
            shutil.copytree(args.serve, before)
        result = {"this": serving(THIS_TREE, args.serve, args.clients, args.seconds)}
        if args.baseline:
            result["baseline"] = serving(args.baseline, before, args.clients, args.seconds)
            result["ratios"] = ratios(result["this"]["runs"], result["baseline"]["runs"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
