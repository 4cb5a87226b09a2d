"""What the filters panel costs a server once a generation: `facets()` on a shop's catalog of N
products (sku, title, price, category, brand), and whether it is right. The last five products
have a category of their own and the last one the highest price, which a sample of the first
values misses.

    python benchmarks/facets.py --n 1000000 --baseline /tmp/prev

`--baseline TREE` reads the same catalog with the release in that git worktree (any release
with catalog attributes), in its own process.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import on_a_file
from search.catalog import Catalog

MEASURE = """
import json, sys, time
from pathlib import Path
from search.catalog import Catalog
from search.filters import facets
with Catalog(Path(sys.argv[1])).sessions() as session:
    started = time.perf_counter()
    found = facets(session)["attributes"]
    seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": round(seconds, 2),
    "categories": len(found.get("category", {}).get("values", [])),
    "late_category_offered": "late" in found.get("category", {}).get("values", []),
    "price_max": found.get("price", {}).get("max"),
}))
"""


def shop(path: Path, n: int) -> None:
    """N products straight into a new catalog: the indexer's cost is not what is measured."""
    Catalog(path).create_schema()
    rng = random.Random(1)
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO roots (id, path, ignore_rules) VALUES (1, '/shop', '{}')")
        connection.executemany(
            "INSERT INTO images (id, root_id, path, size, mtime_ns, sha256, width, height, ext,"
            " taken_at, attributes, indexed_at, tagged)"
            " VALUES (?, 1, ?, 1, 1, '', 1, 1, 'jpg', '2024-01-01', ?, '2024-01-01', 0)",
            ((i, f"img/{i}.jpg", json.dumps(product(rng, i, n))) for i in range(1, n + 1)),
        )


def product(rng: random.Random, i: int, n: int) -> dict[str, str]:
    return {
        "sku": f"S{i:08d}",
        "title": f"Product {i} {rng.random():.6f}",
        "price": "99999" if i == n else f"{rng.random() * 1000:.2f}",
        "category": "late" if i > n - 5 else f"category {i % 20}",
        "brand": f"brand {rng.randrange(40)}",
    }


if __name__ == "__main__":
    on_a_file(__doc__, "catalog.sqlite", shop, MEASURE)
