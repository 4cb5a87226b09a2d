"""The query engine: exact where it matters, checked against brute force."""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from search.batching import QueryEncoder
from search.catalog import ImageRecord
from search.collection import Collection
from search.engine import SearchEngine
from search.errors import BadRequest, NotFound
from search.filters import Filters
from search.model import Encoder
from search.request import IdTerm, ImageTerm, SearchRequest, TextTerm
from tests.conftest import SAMPLES, build


@pytest.fixture(scope="module")
def engine(indexed: Collection, encoder: Encoder) -> SearchEngine:
    return SearchEngine(indexed, encoder)


def stored(collection: Collection) -> tuple[np.ndarray, np.ndarray]:
    with collection.catalog.sessions() as session:
        rows = session.scalars(select(ImageRecord).order_by(ImageRecord.id)).all()
    return np.array([r.id for r in rows]), np.stack([r.vector for r in rows])


def test_each_image_queried_by_id_comes_back_first(engine: SearchEngine) -> None:
    ids, _ = stored(engine.collection)
    for image_id in ids:
        page = engine.search(engine.query_vector([IdTerm(image_id=int(image_id))]), k=3)
        assert page.hits[0].record.id == image_id
        assert page.hits[0].score >= 0.99


def test_faiss_top_k_equals_brute_force(engine: SearchEngine, encoder: Encoder) -> None:
    ids, vectors = stored(engine.collection)
    for text in ("a red apple", "night sky with stars", "boat", "city at night"):
        query = encoder.encode_texts([text])[0]
        scores = vectors @ query
        expected = ids[np.argsort(-scores, kind="stable")][:5]
        page = engine.search(query, k=5)
        assert [h.record.id for h in page.hits] == list(expected)
        np.testing.assert_allclose(
            [h.score for h in page.hits], np.sort(scores)[::-1][:5], atol=1e-5
        )


def test_uploaded_image_finds_its_indexed_twin(engine: SearchEngine) -> None:
    data = (SAMPLES / "sailing-boat.jpg").read_bytes()
    page = engine.search(engine.query_vector([ImageTerm(image_b64=data)]), k=1)
    assert page.hits[0].record.path == "sailing-boat.jpg"
    assert page.hits[0].score > 0.999


def test_pages_are_disjoint_and_add_up_to_the_top(engine: SearchEngine) -> None:
    query = engine.query_vector([TextTerm(text="a picture")])
    top = [h.record.id for h in engine.search(query, k=8).hits]
    first = [h.record.id for h in engine.search(query, k=4).hits]
    second = [h.record.id for h in engine.search(query, k=4, offset=4).hits]
    assert first + second == top
    assert len(engine.search(query, k=10, offset=10).hits) == 2


def test_min_score_cuts_the_list(engine: SearchEngine) -> None:
    query = engine.query_vector([TextTerm(text="a picture")])
    assert engine.search(query, k=12, min_score=2.0).hits == []
    all_hits = engine.search(query, k=12).hits
    middle = all_hits[5].score
    kept = engine.search(query, k=12, min_score=middle).hits
    assert all(h.score >= middle for h in kept) and len(kept) >= 6


def test_negative_terms_push_results_away(engine: SearchEngine) -> None:
    ids, _ = stored(engine.collection)
    wanted, unwanted = (IdTerm(image_id=int(i)) for i in ids[:2])
    plain = engine.query_vector([wanted])
    pushed = engine.query_vector([wanted], [unwanted.model_copy(update={"weight": 0.5})])
    # Away from the negative term (a term minus a share of itself would only shrink it).
    away = engine.image(unwanted.image_id).vector
    assert np.dot(pushed, away) < np.dot(plain, away) - 0.01
    with pytest.raises(BadRequest, match="cancel"):
        engine.query_vector([TextTerm(text="x")], [TextTerm(text="x")])


def test_bad_queries(engine: SearchEngine) -> None:
    for fields in ({"text": "x", "k": 0}, {"text": "x", "k": 1001}, {"text": "x" * 1001}):
        with pytest.raises(BadRequest):
            SearchRequest.parse(fields)
    with pytest.raises(NotFound):
        engine.query_vector([IdTerm(image_id=999_999)])
    # One sentence for every wrong collapse, from a form or JSON, never a union branch's name.
    said = "collapse: give true, false or a cosine above 0 and at most 1"
    for value in ("-1", "2", "0", "nan", "maybe"):
        with pytest.raises(BadRequest, match=f"^{said}$"):
            SearchRequest.from_flat({"q": "x", "collapse": value})
    for body in (b'{"q": "x", "collapse": 1.5}', b'{"q": "x", "collapse": "0.9"}'):
        with pytest.raises(BadRequest, match=f"^{said}$"):
            SearchRequest.from_json(body)
    assert SearchRequest.from_flat({"q": "x", "collapse": "0.9"}).collapse_cosine == 0.9
    for body, where in (
        ({"positive": [{"text": "a", "weight": -1}]}, "positive.0.weight"),
        ({"negative": [{"embedding": [1, "a"]}]}, "negative.0.embedding.1"),
    ):
        with pytest.raises(BadRequest, match=f"^{re.escape(where)}: Input should be"):
            SearchRequest.parse(body)


def test_filters_keep_exact_results_and_never_return_fewer_than_exist(
    tmp_path: Path, encoder: Encoder
) -> None:
    photos = tmp_path / "photos"
    for folder in ("alpha", "beta"):
        (photos / folder).mkdir(parents=True)
        for image in SAMPLES.glob("*.jpg"):
            shutil.copy2(image, photos / folder / f"{folder}-{image.name}")
    engine = SearchEngine(build(tmp_path / "data", photos, encoder), encoder)
    query = engine.query_vector([TextTerm(text="anything")])

    beta = engine.search(query, k=100, filters=Filters.parse({"folder": "beta"})).hits
    assert len(beta) == 8 and all(h.record.path.startswith("beta/") for h in beta)
    assert engine.search(query, k=100, filters=Filters.parse({"folder": "bet"})).hits == []
    assert engine.search(query, k=100, filters=Filters.parse({"ext": "png"})).hits == []
    assert len(engine.search(query, k=100, filters=Filters.parse({"ext": "jpeg"})).hits) == 16
    today = Filters.parse({"date_from": "2000-01-01"})
    assert len(engine.search(query, k=100, filters=today).hits) == 16
    assert engine.search(query, k=100, filters=Filters.parse({"date_to": "1999-12-31"})).hits == []
    # Inclusive: the newest image's own day holds it; the last day there is (an OverflowError).
    for last in (engine.facets()["date_to"], "9999-12-31"):
        until = Filters.parse({"date_to": last})
        assert len(engine.search(query, k=100, filters=until).hits) == 16
    with pytest.raises(BadRequest, match="ISO date"):
        Filters.parse({"date_from": "notadate"})


def test_concurrent_text_queries_share_batches_and_get_their_own_vectors(
    encoder: Encoder,
) -> None:
    queries = QueryEncoder(encoder)
    texts = [f"query number {i}" for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(queries.text, texts))
    expected = encoder.encode_texts(texts)
    np.testing.assert_allclose(np.stack(vectors), expected, atol=1e-5)
    assert queries.text("query number 3") is vectors[3]  # remembered, not encoded again
