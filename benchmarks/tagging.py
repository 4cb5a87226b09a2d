"""What tagging costs: every image of a collection of N CLIP-like vectors tagged against the
default vocabulary (what a new vocabulary or a new model asks), against a naive loop that tags
one image per transaction through the ORM.

    python benchmarks/tagging.py --n 100000
    python benchmarks/tagging.py --n 1000000 --dir /var/tmp

The collection is written as the product stores it (benchmarks/query_latency.py's fill), all of
it untagged. The vocabulary's prompt vectors are CLIP-like text vectors, stored where the tagger
looks for them first, so no model is loaded: embedding 319 prompts is a fixed cost of seconds
that does not grow with N. The baseline tags `--sample` images and is scaled to N. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import delete, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clip_like import ClipLike, _unit
from benchmarks.query_latency import fill, peak_mb
from indexer.tagging import Tagger
from search.catalog import ImageRecord, ImageTag, StoredVector, TagPrompts
from search.collection import Collection
from search.spec import ModelSpec
from search.tags import Prompts, Vocabulary


class _Unrecorded:
    def see(self, ids: np.ndarray, images: np.ndarray) -> None:
        pass


def _no_model() -> None:
    raise AssertionError("the prompts are stored: tagging must not load a model")


def prepared(folder: Path, n: int) -> tuple[Collection, Prompts]:
    collection = Collection.create_or_open(folder, ModelSpec.from_args("ViT-B-32", "none"))
    clip = ClipLike(seed=0)
    fill(collection, clip.image_chunks(n), _Unrecorded())  # type: ignore[arg-type]
    vocabulary = Vocabulary.default()
    subjects = clip.texts_for(clip.images(len(vocabulary.names)))
    neutral = _unit(clip.text_mean[None, :] + 0.1 * _unit(clip.rng.standard_normal((1, 512))))
    prompts = Prompts(subjects, neutral[0], 100.0)
    with collection.catalog.transaction() as session:
        key = {"model": collection.spec.identity, "vocabulary": vocabulary.digest}
        session.add(TagPrompts(**key, scale=prompts.scale, vectors=prompts.packed()))
    return collection, prompts


def naive(collection: Collection, prompts: Prompts, sample: int) -> float:
    """Seconds to tag `sample` images one at a time, each in its own ORM transaction."""
    started = time.perf_counter()
    for image_id in range(1, sample + 1):
        with collection.catalog.transaction() as session:
            vector = session.get(StoredVector, image_id).vector
            _, indexes, probabilities = prompts.tag(vector[None, :])
            for index, probability in zip(indexes.tolist(), probabilities.tolist(), strict=True):
                session.add(ImageTag(image_id=image_id, tag_id=index + 1, score=probability))
            session.get(ImageRecord, image_id).tagged = True
    seconds = time.perf_counter() - started
    with collection.catalog.transaction() as session:  # the fast path starts from scratch
        session.execute(delete(ImageTag))
        session.execute(update(ImageRecord).values(tagged=False))
    return seconds


def measure(folder: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    collection, prompts = prepared(folder, args.n)
    written_s = time.perf_counter() - started
    before = peak_mb("writing the collection")
    tagger = Tagger(collection, _no_model)  # type: ignore[arg-type]
    tagger.use(Vocabulary.default())
    naive_s = naive(collection, prompts, args.sample)

    started = time.perf_counter()
    tagged = tagger.catch_up()
    tag_s = time.perf_counter() - started
    after = peak_mb("tagging")
    with collection.catalog.sessions() as session:
        rows = session.query(ImageTag).count()
    return {
        "n": args.n,
        "vocabulary": len(prompts.tags),
        "tagged": tagged,
        "tags_per_image": round(rows / tagged, 2),
        "tag_seconds": round(tag_s, 1),
        "images_per_second": round(tagged / tag_s),
        "naive_seconds_estimated": round(naive_s * args.n / args.sample, 1),
        "naive_images_per_second": round(args.sample / naive_s),
        "rss_mb_before": before,
        "rss_mb_peak": after,
        "write_seconds": round(written_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2_000, help="images the naive loop tags")
    parser.add_argument("--dir", type=Path, default=None, help="where the collection is written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print(json.dumps(measure(Path(folder) / "data", args)))


if __name__ == "__main__":
    main()
