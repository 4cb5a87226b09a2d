"""Text→image retrieval quality on a user's own captioned images: each caption is a query and
its own image the one relevant result, as in the Flickr30k/COCO retrieval benchmarks."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from search.catalog import ImageRecord, Root, StoredVector
from search.collection import Collection
from search.errors import ClipsearchError

if TYPE_CHECKING:
    from search.model import Encoder

RECALL_AT = (1, 5, 10)
TEXT_BATCH = 256


def read_captions(path: Path) -> list[tuple[str, str]]:
    """(image path relative to the images folder, caption) rows of a CSV with `image` and
    `caption` columns; one image may have several captions."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
            reader = csv.DictReader(handle)
            if not {"image", "caption"} <= set(reader.fieldnames or ()):
                raise ClipsearchError(f"{path}: needs 'image' and 'caption' columns")
            return [
                (row["image"].strip(), row["caption"].strip())
                for row in reader
                if row["image"] and row["caption"]
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipsearchError(f"cannot read {path}: {exc}") from exc


def relevant_ranks(queries: np.ndarray, images: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """The 0-based rank of each query's relevant image among all images, by exact search: the
    number of images scoring strictly higher. Exact, so it measures the model, not the index."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), TEXT_BATCH):
        block = queries[start : start + TEXT_BATCH] @ images.T
        own = block[np.arange(len(block)), relevant[start : start + TEXT_BATCH]]
        ranks[start : start + len(block)] = (block > own[:, None]).sum(axis=1)
    return ranks


def _indexed_under(collection: Collection, folder: Path) -> tuple[list[Any], str]:
    """The (path, vector) rows of the images under `folder`, and the prefix their paths have:
    the folder may be a root of the collection or a folder inside one."""
    with collection.catalog.sessions() as session:
        roots = [Path(path) for path in session.scalars(select(Root.path))]
        root = next((root for root in roots if folder.is_relative_to(root)), folder)
        prefix = "" if root == folder else folder.relative_to(root).as_posix() + "/"
        rows = session.execute(
            select(ImageRecord.path, StoredVector.data)
            .join(Root)
            .join(StoredVector)
            .where(Root.path == str(root), ImageRecord.path.startswith(prefix, autoescape=True))
            .order_by(ImageRecord.id)
        ).all()
    return list(rows), prefix


def recall(ranks: np.ndarray, at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    return {f"recall@{k}": round(float(np.mean(ranks < k)), 4) for k in at}


def evaluate(
    collection: Collection, encoder: Encoder, folder: Path, captions: list[tuple[str, str]]
) -> dict[str, Any]:
    """Recall of the collection's model over the images indexed from `folder`."""
    started = time.perf_counter()
    rows, prefix = _indexed_under(collection, folder.resolve())
    if not rows:
        raise ClipsearchError(f"no images of {folder} are indexed")
    position = {row.path[len(prefix) :]: i for i, row in enumerate(rows)}
    images = np.stack([np.frombuffer(row.data, dtype=np.float32) for row in rows])
    usable = [(position[image], text) for image, text in captions if image in position]
    if not usable:
        raise ClipsearchError("no caption names an indexed image")
    texts = [text for _, text in usable]
    queries = np.concatenate(
        [
            encoder.encode_texts(texts[start : start + TEXT_BATCH])
            for start in range(0, len(texts), TEXT_BATCH)
        ]
    )
    ranks = relevant_ranks(queries, images, np.array([i for i, _ in usable]))
    return {
        "model": collection.spec.name,
        "images": len(rows),
        "captions": len(usable),
        "skipped_captions": len(captions) - len(usable),
        **recall(ranks),
        "median_rank": int(np.median(ranks)) + 1,
        "seconds": round(time.perf_counter() - started, 2),
    }
