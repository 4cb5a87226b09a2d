"""`clipsearch serve --watch DIR` while photos are copied into DIR and a client keeps querying:
how long until every photo is searchable, and whether any query failed meanwhile.

    python benchmarks/watch_copy.py --images ../shared/data/flickr8k_1k/images

Makes an empty collection of the model given, starts the server watching an empty folder, then
copies the images in (shutil.copy2, as a file manager does) while one client sends text queries
back to back. Prints one JSON object: seconds to copy, seconds until the server answered with
every image, queries sent, errors, and query latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import environment
from indexer.scan import IMAGE_EXTENSIONS
from tests.conftest import free_port

THIS_TREE = Path(__file__).resolve().parent.parent


def clipsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipsearch", *args]


def query_until(base: str, stop: threading.Event, latencies: list[float], errors: list[str]):
    words = ["a dog running", "children playing", "a man on a bike", "water", "a red shirt"]
    sent = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            answer = requests.get(f"{base}/api/search", params={"q": words[sent % 5]}, timeout=30)
            if not answer.ok:
                errors.append(f"{answer.status_code}: {answer.text[:200]}")
        except requests.RequestException as exc:
            errors.append(str(exc))
        latencies.append((time.perf_counter() - started) * 1000)
        sent += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    with tempfile.TemporaryDirectory() as tmp:
        folder, data, port = Path(tmp, "photos"), Path(tmp, "data"), free_port()
        folder.mkdir()
        model = ["--model", args.model, "--pretrained", args.pretrained, "--data-dir", str(data)]
        subprocess.run(clipsearch("index", str(folder), *model, "-q"), check=True)
        serve = clipsearch("serve", "--port", str(port), "--data-dir", str(data))
        server = subprocess.Popen(
            [*serve, "--watch", str(folder)],
            env=environment(THIS_TREE),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            print(json.dumps(copy_while_querying(base, images, folder)))
        finally:
            server.terminate()
            server.wait()


def copy_while_querying(base: str, images: list[Path], folder: Path) -> dict:
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    stop, latencies, errors = threading.Event(), [], []
    client = threading.Thread(target=query_until, args=(base, stop, latencies, errors))
    client.start()
    started = time.perf_counter()
    for image in images:
        shutil.copy2(image, folder / image.name)
    copied = time.perf_counter() - started
    while requests.get(f"{base}/healthz", timeout=30).json()["images"] < len(images):
        time.sleep(0.2)
    searchable = time.perf_counter() - started
    stop.set()
    client.join()
    latencies.sort()
    return {
        "images": len(images),
        "copy_seconds": round(copied, 1),
        "all_searchable_seconds": round(searchable, 1),
        "queries": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "query_p50_ms": round(latencies[len(latencies) // 2], 1),
        "query_p99_ms": round(latencies[int(len(latencies) * 0.99)], 1),
    }


if __name__ == "__main__":
    main()
