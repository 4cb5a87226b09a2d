"""Reading a shop's CSV catalog of N products (sku, title, price, category, brand), the first
step of every `clipsearch index --catalog` run, re-runs included: seconds and the process's
peak memory. The images are not there, so every row is stat'ed and found missing.

    python benchmarks/catalog_read.py --n 1000000 --baseline /tmp/prev

`--baseline TREE` reads the same file with the release in that git worktree, in its own
process.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import on_a_file

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from indexer.catalog_file import read_catalog
started = time.perf_counter()
rows = read_catalog(Path(sys.argv[1]))
print(json.dumps({
    "seconds": round(time.perf_counter() - started, 1),
    "rows": len(rows.files) + len(rows.unreadable),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
}))
"""


def write_catalog(path: Path, n: int) -> None:
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as out:
        out.write("image,sku,title,price,category,brand\n")
        for i in range(n):
            title = f"Product {i} {rng.random():.6f}"
            out.write(
                f"img/{i}.jpg,S{i:08d},{title},{rng.random() * 1000:.2f},c{i % 20},b{i % 40}\n"
            )


if __name__ == "__main__":
    on_a_file(__doc__, "products.csv", write_catalog, MEASURE)
