"""A collection past the compression threshold, end to end: the indexer streams it into the
compressed index, its full vectors go to disk, and queries come back with exact cosines. The
thresholds are lowered so that a test-sized collection crosses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search import vectors
from search.collection import Collection
from search.engine import SearchEngine
from search.halfvectors import HALF_VECTORS
from search.tags import Prompts, Vocabulary
from tests.conftest import build, draw_photos


@pytest.fixture
def large(tmp_path: Path, encoder, monkeypatch: pytest.MonkeyPatch) -> Collection:
    monkeypatch.setattr(vectors, "ANN_THRESHOLD", 20)
    monkeypatch.setattr(vectors, "COMPRESS_THRESHOLD", 40)
    monkeypatch.setattr(vectors, "HUB_SHARE", 1 / 4)  # a hub list of some of 60 images
    draw_photos(tmp_path / "photos", 60, seed=5)
    return build(tmp_path / "data", tmp_path / "photos", encoder)


def own_answers(engine: SearchEngine) -> list[tuple[int, int, float]]:
    """(id, first id found, its score) for every image queried by its own vector."""
    ids, images = engine.vectors.ids(), engine.vectors.half.read(engine.vectors.ids())
    answers = []
    for image_id, vector in zip(ids.tolist(), images, strict=True):
        hit = engine.search(vector, 1).hits[0]
        answers.append((image_id, hit.record.id, hit.score))
    return answers


def test_a_large_collection_is_compressed_and_answers_exactly(large: Collection, encoder) -> None:
    engine = SearchEngine(large, encoder)
    assert engine.vectors.is_compressed and len(engine.vectors) == 60
    assert "PQ" in large.stats()["index"]["type"]
    assert (large.root / HALF_VECTORS).stat().st_size == 61 * encoder.dim * 2  # rows by id
    answers = own_answers(engine)
    assert all(found == image_id for image_id, found, _ in answers)
    assert all(abs(score - 1) < 2e-3 for _, _, score in answers)
    generation = large.catalog.generation()
    large.vectors_path(generation).unlink()  # a crash before the index was saved
    (large.root / HALF_VECTORS).unlink()
    rebuilt = SearchEngine(Collection.open(large.root), encoder)
    assert rebuilt.vectors.is_compressed and own_answers(rebuilt) == answers


def test_the_hub_list_is_drawn_along_the_texts_the_tags_embedded(
    large: Collection, encoder
) -> None:
    """The indexer's tagging embedded the default vocabulary; the compressed index it then
    built keeps the images furthest along those texts' mean in its hub list."""
    prompts = Prompts.embed(encoder, Vocabulary.default())
    mean = np.vstack([prompts.neutral, prompts.tags]).mean(axis=0)
    with large.catalog.sessions() as session:
        text = large.catalog.text_direction(session, large.spec.identity, encoder.dim)
    np.testing.assert_allclose(text, mean / np.linalg.norm(mean), atol=1e-5)
    index = large.load_vectors()[0]
    np.testing.assert_allclose(index.hub / np.linalg.norm(index.hub), text, atol=1e-6)
    ids, hubs = index.ids(), index.hubs.ids
    assert 5 <= len(hubs) <= 25
    assert sorted(hubs) == sorted(ids[index.half.read(ids) @ index.hub >= 1])


def test_growing_past_the_threshold_compresses_and_shrinking_goes_back(
    tmp_path: Path, encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vectors, "ANN_THRESHOLD", 20)
    monkeypatch.setattr(vectors, "COMPRESS_THRESHOLD", 40)
    photos = tmp_path / "photos"
    drawn = draw_photos(photos, 30, seed=6)
    collection = build(tmp_path / "data", photos, encoder)
    assert not collection.load_vectors()[0].is_compressed
    draw_photos(tmp_path / "more", 30, seed=7)
    for path in (tmp_path / "more").iterdir():
        path.rename(photos / path.name)
    build(tmp_path / "data", photos, encoder)
    assert collection.load_vectors()[0].is_compressed
    for path in drawn:
        path.unlink()
    build(tmp_path / "data", photos, encoder)
    index = collection.load_vectors()[0]
    assert not index.is_compressed and len(index) == 30
    _, ids = index.search(np.ones(encoder.dim, dtype=np.float32) / encoder.dim**0.5, 30)
    assert len(ids) == 30
