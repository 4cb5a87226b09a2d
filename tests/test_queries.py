"""Every kind of query the search issue asks for, over a 120-photo collection in two folders,
through the JSON API as a client sends it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from search.collection import Collection
from search.engine import SearchEngine
from search.evaluation import evaluate, recall, relevant_ranks
from search.languages import NOTICES
from search.model import Encoder
from search.syntax import QueryPart, parse_query
from tests.conftest import TINY_ARGS, build, draw_photos, run_cli
from web import create_app
from web.messages import MESSAGES


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Collection:
    root = tmp_path_factory.mktemp("two-folders")
    draw_photos(root / "photos" / "alpha", 60, seed=1)
    beta = draw_photos(root / "photos" / "beta", 60, seed=2)
    shutil.copy2(beta[0], root / "photos" / "beta" / "copy-of-beta-000.jpg")  # a duplicate
    return build(root / "data", root / "photos", encoder)


@pytest.fixture(scope="module")
def client(two_folders: Collection, encoder: Encoder) -> FlaskClient:
    app = create_app({"DATA_DIR": two_folders.root}, SearchEngine(two_folders, encoder))
    return app.test_client()


def search(client: FlaskClient, **body: object) -> dict:
    response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.json
    return response.json


def ids(page: dict) -> list[int]:
    return [result["id"] for result in page["results"]]


def test_a_folder_filter_returns_exactly_that_folder(client: FlaskClient) -> None:
    page = search(client, text="a photo", k=100, filters={"folder": "beta"})
    assert page["count"] == 61  # 60 drawn and the copy
    assert all(r["path"].startswith("beta/") for r in page["results"])
    alpha = search(client, text="a photo", k=100, filters={"folder": "alpha"})
    assert alpha["count"] == 60


def test_a_query_in_a_script_the_model_cannot_read_comes_with_a_notice(
    client: FlaskClient,
) -> None:
    chinese = search(client, text="红色的圆", k=3)
    assert chinese["count"] == 3 and chinese["notice"]["code"] == "english_only"
    assert chinese["notice"]["message"] == NOTICES["english_only"]
    image_id = ids(chinese)[0]
    for body in (
        {"text": "red circles"},
        {"text": "café crème brûlée"},  # Latin script: read, however well
        {"image_id": image_id},
        {"positive": ["red", {"image_id": image_id}]},
    ):
        assert search(client, **body, k=3)["notice"] is None, body
    mixed = search(client, positive=["red circles"], negative=["蓝色"], k=3)
    assert mixed["notice"]["code"] == "english_only"
    # The page says it in its reader's language, and only where it applies.
    page = client.get("/?q=红色的圆", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    assert MESSAGES["zh"]["notice_english_only"] in page
    page = client.get("/?q=red", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    assert MESSAGES["zh"]["notice_english_only"] not in page and 'role="note" hidden' in page


def test_two_pages_are_the_top_twenty(client: FlaskClient) -> None:
    top = ids(search(client, text="red circles", k=20))
    first = ids(search(client, text="red circles", k=10, offset=0))
    second = ids(search(client, text="red circles", k=10, offset=10))
    assert first + second == top and len(set(top)) == 20


def test_each_photo_by_id_returns_itself_first_when_asked(client: FlaskClient) -> None:
    every = ids(search(client, text="a photo", k=200))
    assert len(every) == 121
    for image_id in every:
        page = search(client, image_id=image_id, k=2, include_query=True)
        assert page["results"][0]["id"] == image_id or page["results"][0]["score"] >= 0.9999
        assert page["results"][0]["score"] >= 0.99
        assert image_id not in ids(search(client, image_id=image_id, k=5))


def test_negative_terms_move_the_ranking_away(client: FlaskClient) -> None:
    plain = search(client, text="blue squares", k=120)
    pushed = search(client, positive=["blue squares"], negative=["blue squares on green"], k=120)
    assert ids(plain) != ids(pushed)
    same_as_q = search(client, q="blue squares - blue squares on green", k=120)
    assert ids(same_as_q) == ids(pushed)


def test_min_score_above_any_cosine_returns_nothing(client: FlaskClient) -> None:
    assert search(client, text="a photo", min_score=2.0)["results"] == []


def test_a_raw_embedding_is_a_query(client: FlaskClient) -> None:
    target = client.application.extensions["clipsearch"].image(5)
    for scale in (3, 1e38):  # any length: 1e38 squared was no float32 ("must be finite")
        page = search(client, embedding=(target.vector.astype(float) * scale).tolist(), k=1)
        assert page["results"][0]["id"] == 5 and page["results"][0]["score"] > 0.999
    bad = client.post("/api/search", json={"embedding": [1.0, 2.0]})
    assert bad.status_code == 400 and "embedding" in bad.json["error"]


def test_collapse_shows_one_of_each_near_duplicate(client: FlaskClient) -> None:
    every = search(client, text="a photo", k=121)
    paths = [r["path"] for r in every["results"]]
    assert "beta/copy-of-beta-000.jpg" in paths and "beta/beta-000.jpg" in paths
    # The tiny random model puts distinct drawings at cosines up to 0.997; real CLIP puts
    # distinct photos below the default of 0.95.
    collapsed = search(client, text="a photo", k=120, collapse=0.999)
    kept = [r["path"] for r in collapsed["results"]]
    assert (
        len(kept) == 120
        and len(set(kept) & {"beta/copy-of-beta-000.jpg", "beta/beta-000.jpg"}) == 1
    )
    page_two = search(client, text="a photo", k=60, offset=60, collapse=0.999)
    assert kept[60:] == [r["path"] for r in page_two["results"]]
    assert len(search(client, text="a photo", k=121, collapse=True)["results"]) < 121


def test_query_syntax() -> None:
    assert parse_query("cat + 2:grass - dog") == [
        QueryPart("cat", 1.0, False),
        QueryPart("grass", 2.0, False),
        QueryPart("dog", 1.0, True),
    ]
    assert parse_query("t-shirt, size 10:30") == [QueryPart("t-shirt, size 10:30", 1.0, False)]
    assert parse_query("beach - 0.5:people") == [
        QueryPart("beach", 1.0, False),
        QueryPart("people", 0.5, True),
    ]


def test_recall_metric_on_embeddings_whose_answer_is_known() -> None:
    images = np.eye(6, dtype=np.float32)
    # Query i points at image i, except query 3 which prefers image 4, then 3 second.
    queries = np.eye(6, dtype=np.float32)
    queries[3] = [0, 0, 0, 0.6, 0.8, 0]
    queries[5] = [0.5, 0.5, 0.4, 0.4, 0.3, 0.2]  # image 5 ranks last of six
    ranks = relevant_ranks(queries, images, np.arange(6))
    assert list(ranks) == [0, 0, 0, 1, 0, 5]
    figures = recall(ranks, (1, 2, 6))
    assert figures == pytest.approx(
        {"recall@1": 4 / 6, "recall@2": 5 / 6, "recall@6": 1.0}, abs=1e-3
    )


def test_eval_of_a_folder_inside_an_indexed_one(tmp_path: Path, encoder: Encoder) -> None:
    """Its images are stored under the outer folder's root, as "sub/…"; the captions name
    them relative to the folder evaluated."""
    draw_photos(tmp_path / "all", 3, seed=4)
    draw_photos(tmp_path / "all" / "sub", 4, seed=5)
    collection = build(tmp_path / "data", tmp_path / "all", encoder)
    captions = [(f"sub-{i:03d}.jpg", f"picture {i}") for i in range(4)] + [("all-000.jpg", "x")]
    figures = evaluate(collection, encoder, tmp_path / "all" / "sub", captions)
    assert (figures["images"], figures["captions"], figures["skipped_captions"]) == (4, 4, 1)


def test_eval_command_reports_recall(tmp_path: Path) -> None:
    draw_photos(tmp_path / "images", 8, seed=5)
    captions = tmp_path / "captions.csv"
    rows = [f"images-{i:03d}.jpg,a picture number {i}" for i in range(8)]
    captions.write_text("image,caption\n" + "\n".join([*rows, "missing.jpg,gone"]) + "\n")
    args = ["--images", str(tmp_path / "images"), "--captions", str(captions)]
    result = run_cli(
        "eval", *args, "--data-dir", str(tmp_path / "data"), *TINY_ARGS, "--json", "-q"
    )
    figures = json.loads(result.stdout)
    assert (figures["images"], figures["captions"], figures["skipped_captions"]) == (8, 8, 1)
    assert 0 <= figures["recall@1"] <= figures["recall@5"] <= figures["recall@10"] == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na,b\n")
    failed = run_cli(
        "eval", *args, "--captions", str(bad), "--data-dir", str(tmp_path / "d2"), check=False
    )
    assert failed.returncode == 1 and "'image' and 'caption'" in failed.stderr
