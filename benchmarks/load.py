"""N concurrent clients against a running `clipsearch serve` for a bounded time: throughput,
latency percentiles and errors, with /healthz under the same load as the baseline.

    clipsearch index /tmp/ten-thousand --data-dir /tmp/load --model ViT-B-32 --pretrained none
    clipsearch serve --data-dir /tmp/load --port 8000 &
    python benchmarks/load.py --url http://127.0.0.1:8000 --clients 8 32 --seconds 30

Each client is a thread with its own keep-alive connection, sending the mix a web page and a
shop backend send: texts (some with negative terms), "more like this" by id, filtered searches,
second pages, and a thumbnail after each search. Any status other than 200 counts as an error.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    total = requests.get(f"{args.url}/api/stats", timeout=30).json()["images"]
    results = []
    for clients in args.clients:
        baseline = run(args.url, clients, min(5, args.seconds), total, "/healthz")
        result = {**run(args.url, clients, args.seconds, total, None), "healthz": baseline}
        print(json.dumps(result), flush=True)
        results.append(result)
    print(json.dumps({"images": total, "runs": results}))


if __name__ == "__main__":
    main()
