"""Sequential query latency of a running `clipsearch serve`, against /healthz as the baseline.

    clipsearch serve --port 8000 &
    python benchmarks/http_latency.py --url http://127.0.0.1:8000 --requests 200

The baseline is the same HTTP round trip with no model or index work, so the difference is what
a text query costs: tokenise + encode + FAISS search + catalog fetch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.parse
import urllib.request

WORDS = ["dog", "beach", "a child playing", "red car", "mountain", "people at a market", "snow"]


def timed_get(url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = json.loads(response.read())
    return (time.perf_counter() - started) * 1000, body


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("-k", type=int, default=20)
    args = parser.parse_args()

    timed_get(f"{args.url}/healthz")  # warm-up
    baseline = [timed_get(f"{args.url}/healthz")[0] for _ in range(args.requests)]
    search, server = [], []
    for i in range(args.requests):
        query = urllib.parse.urlencode({"q": f"{WORDS[i % len(WORDS)]} {i}", "k": args.k})
        elapsed, body = timed_get(f"{args.url}/api/search?{query}")
        search.append(elapsed)
        server.append(body["took_ms"])
    print(
        json.dumps(
            {
                "requests": args.requests,
                "k": args.k,
                "healthz_baseline": summary(baseline),
                "search": summary(search),
                "search_server_took": summary(server),
            }
        )
    )


if __name__ == "__main__":
    main()
