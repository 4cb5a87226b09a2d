"""Zero-shot tags: a vocabulary file drives the tags, the facet and the filter, and a new
vocabulary retags every image from its stored vector without reading one image."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import requests

from indexer.sync import Indexer
from search.collection import Collection
from search.model import Encoder
from search.spec import ModelSpec
from search.tags import MAX_TAGS_PER_IMAGE, Prompts, Vocabulary
from tests.conftest import TINY_CONFIG, build, one_line, run_cli, serving

# The rule as search/tags.py documents it, written out here as the oracle.
PROBABILITY = 0.9
BORDERLINE = 0.01  # a probability this close to the bar may round either way on another CPU


@pytest.fixture(scope="module")
def tempered(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    """The tiny model with CLIP's trained temperature (100) instead of its initial one (14):
    the random model's probabilities then spread out like a trained one's, few near the bar."""
    config = json.loads(TINY_CONFIG.read_text())
    config["init_logit_scale"] = math.log(100)
    path = tmp_path_factory.mktemp("model") / "tiny-tempered.json"
    path.write_text(json.dumps(config))
    return Encoder(ModelSpec.from_args(str(path), "none"), "cpu")


def probabilities(
    collection: Collection, encoder: Encoder, words: list[str]
) -> dict[int, np.ndarray]:
    """Each image's probability for each word: sigmoid(scale * (cos(tag) - cos(neutral)))."""
    prompts = encoder.encode_texts([f"a photo of {word}." for word in words])
    neutral = encoder.encode_texts(["a photo."])[0]
    with sqlite3.connect(collection.root / "catalog.sqlite") as connection:
        rows = connection.execute("SELECT id, vector FROM embeddings").fetchall()
    return {
        image_id: 1 / (1 + np.exp(-encoder.logit_scale * (vector @ prompts.T - vector @ neutral)))
        for image_id, data in rows
        for vector in [np.frombuffer(data, dtype=np.float32).astype(np.float64)]
    }


def mixed_words(collection: Collection, encoder: Encoder, count: int) -> list[str]:
    """Words of the default vocabulary that some images clear and some do not, none of them
    near the bar: the random tiny model decides which."""
    words = list(Vocabulary.default().names)
    scores = np.stack(list(probabilities(collection, encoder, words).values()))
    clear = (np.abs(scores - PROBABILITY) > BORDERLINE).all(axis=0)
    passing = (scores >= PROBABILITY).sum(axis=0)
    mixed = [
        word
        for word, ok, n in zip(words, clear, passing, strict=True)
        if ok and 0 < n < len(scores)
    ]
    assert len(mixed) >= count, "the tiny model tags too few words to test with"
    return mixed[:count]


def expected_tags(
    collection: Collection, encoder: Encoder, words: list[str]
) -> dict[int, set[str]]:
    return {
        image_id: {word for word, p in zip(words, scores, strict=True) if p >= PROBABILITY}
        for image_id, scores in probabilities(collection, encoder, words).items()
    }


def api_tags(base: str, words: list[str]) -> dict[int, set[str]]:
    """Every image's tags as search results show them."""
    body = requests.get(f"{base}/api/search", params={"q": words[0], "k": 100}, timeout=30).json()
    return {hit["id"]: {tag["name"] for tag in hit["tags"]} for hit in body["results"]}


def test_an_image_keeps_its_most_probable_tags_first_and_at_most_eight() -> None:
    rng = np.random.default_rng(1)
    vectors, tags = rng.standard_normal((40, 16)), rng.standard_normal((30, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tags /= np.linalg.norm(tags, axis=1, keepdims=True)
    tags[7] = tags[3]  # a tie: the earlier tag first
    rows, indexes, scores = Prompts(tags, np.zeros(16), 100.0).tag(vectors)
    found: dict[int, list[int]] = {}
    for row, index, score in zip(rows.tolist(), indexes.tolist(), scores.tolist(), strict=True):
        found.setdefault(row, []).append(index)
        assert score >= PROBABILITY
    expected = {}
    for row, vector in enumerate(vectors):
        p = 1 / (1 + np.exp(-100.0 * (tags @ vector)))
        best = sorted((i for i in range(len(tags)) if p[i] >= PROBABILITY), key=lambda i: -p[i])
        if best:
            expected[row] = best[:MAX_TAGS_PER_IMAGE]
    assert found == expected and list(rows) == sorted(rows)
    assert any(len(best) == MAX_TAGS_PER_IMAGE for best in expected.values())
    assert any(3 in best and 7 in best for best in expected.values())


def test_a_vocabulary_file_drives_the_facet_and_the_filter_and_changing_it_reads_no_image(
    tmp_path: Path, photos: Path, tempered: Encoder
) -> None:
    encoder = tempered
    collection = build(tmp_path / "data", photos, encoder)
    first, second = mixed_words(collection, encoder, 3), mixed_words(collection, encoder, 5)[3:]
    vocabulary = tmp_path / "tags.txt"
    vocabulary.write_text("# my tags\n" + "\n".join([*first, "", first[0].upper()]) + "\n")
    run_cli("tags", "--vocabulary", str(vocabulary), "--data-dir", str(collection.root))

    with serving(collection.root) as (base, _server):
        expected = expected_tags(collection, encoder, first)
        assert api_tags(base, first) == expected
        facet = requests.get(f"{base}/api/facets", timeout=30).json()["tags"]
        counts = {word: sum(word in tags for tags in expected.values()) for word in first}
        assert facet == sorted(
            ({"name": w, "count": n} for w, n in counts.items() if n),
            key=lambda tag: (-tag["count"], tag["name"]),
        )
        for word in first:
            hits = requests.get(f"{base}/api/search", params={"q": "x", "tag": word, "k": 100})
            found = {hit["id"] for hit in hits.json()["results"]}
            assert found == {i for i, tags in expected.items() if word in tags}

        # The photos are gone: a retag that read any image would fail or drop them.
        shutil.move(photos, tmp_path / "elsewhere")
        vocabulary.write_text("\n".join(second) + "\n")
        before = _rows(collection.root)
        run_cli("tags", "--vocabulary", str(vocabulary), "--data-dir", str(collection.root))
        assert _rows(collection.root) == before  # the same images, vectors and index times
        # The running server follows without a restart.
        assert api_tags(base, second) == expected_tags(collection, encoder, second)
        facet = requests.get(f"{base}/api/facets", timeout=30).json()["tags"]
        assert {tag["name"] for tag in facet} <= set(second) and facet


def _rows(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(data_dir / "catalog.sqlite") as connection:
        return connection.execute(
            "SELECT images.id, path, indexed_at, vector FROM images JOIN embeddings USING (id)"
        ).fetchall()


def test_new_and_changed_images_are_tagged_by_the_run_that_indexes_them(
    tmp_path: Path, photos: Path, encoder: Encoder
) -> None:
    collection = build(tmp_path / "data", photos, encoder)
    stats = collection.stats()["tags"]
    assert stats == {"vocabulary": len(Vocabulary.default().names), "default": True, "untagged": 0}
    shutil.copy(photos / "red-apple.jpg", photos / "another-apple.jpg")
    (photos / "snowman.png").write_bytes((photos / "rainbow.png").read_bytes())
    summary = Indexer(collection, encoder, workers=0, progress=False).run([photos])
    assert (summary.added, summary.updated, summary.tagged) == (1, 1, 2)
    assert collection.stats()["tags"]["untagged"] == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"beach\nsalt, pepper\n", "line 2: a tag cannot hold a comma"),
        (b"\xff\xfe not utf-8", "cannot read"),
        (b"x" * 101, "line 1: a tag has at most 100 characters"),
    ],
)
def test_a_bad_vocabulary_file_is_refused_in_one_line(
    tmp_path: Path, collection: Collection, content: bytes, problem: str
) -> None:
    vocabulary = tmp_path / "tags.txt"
    vocabulary.write_bytes(content)
    result = run_cli(
        "tags", "--vocabulary", str(vocabulary), "--data-dir", str(collection.root), check=False
    )
    assert result.returncode == 1 and problem in one_line(result.stderr)


def test_a_fifo_as_the_vocabulary_does_not_block(tmp_path: Path, collection: Collection) -> None:
    fifo = tmp_path / "tags.txt"
    os.mkfifo(fifo)
    result = run_cli(
        "tags", "--vocabulary", str(fifo), "--data-dir", str(collection.root), check=False
    )
    assert result.returncode == 1 and "not a regular file" in one_line(result.stderr)
