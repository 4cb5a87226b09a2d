"""The web app over HTTP, served by `clipsearch serve` on 127.0.0.1."""

from __future__ import annotations

import base64

import pytest
import requests

from search.collection import Collection
from tests.conftest import SAMPLES


def get(server: str, path: str, **params: object) -> requests.Response:
    return requests.get(f"{server}{path}", params=params, timeout=30)


def test_search_get_has_the_spec_shape(server: str) -> None:
    body = get(server, "/api/search", q="dog", k=5).json()
    assert set(body) == {"results", "count", "k", "offset", "took_ms", "model"}
    assert body["count"] == 5 and body["k"] == 5 and body["offset"] == 0
    first = body["results"][0]
    assert set(first) == {
        "id",
        "path",
        "url",
        "thumbnail_url",
        "score",
        "width",
        "height",
        "attributes",
    }
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_post_image_id_returns_that_image_first(server: str) -> None:
    target = get(server, "/api/search", q="sky", k=3).json()["results"][2]["id"]
    body = requests.post(f"{server}/api/search", json={"image_id": target, "k": 3}, timeout=30)
    first = body.json()["results"][0]
    assert first["id"] == target and first["score"] >= 0.99


def test_post_uploaded_image_json_and_multipart(server: str) -> None:
    data = (SAMPLES / "red-house.jpg").read_bytes()
    as_json = requests.post(
        f"{server}/api/search",
        json={"image_b64": base64.b64encode(data).decode(), "k": 1},
        timeout=30,
    ).json()
    multipart = requests.post(
        f"{server}/api/search", files={"image": ("x.jpg", data)}, data={"k": "1"}, timeout=30
    ).json()
    assert as_json["results"][0]["path"] == multipart["results"][0]["path"] == "red-house.jpg"


def test_post_positive_negative_and_filters(server: str) -> None:
    body = requests.post(
        f"{server}/api/search",
        json={
            "positive": ["sky", {"text": "sea", "weight": 2}],
            "negative": ["city"],
            "k": 50,
            "filters": {"ext": "png"},
        },
        timeout=30,
    ).json()
    assert body["count"] == 4 and all(r["path"].endswith(".png") for r in body["results"])


def test_images_thumbs_metadata_stats_health(server: str, indexed: Collection) -> None:
    hit = get(server, "/api/search", q="apple", k=1).json()["results"][0]
    original = get(server, hit["url"])
    assert original.status_code == 200
    assert original.content == (SAMPLES / hit["path"]).read_bytes()
    thumb = get(server, hit["thumbnail_url"])
    assert thumb.headers["Content-Type"] == "image/jpeg" and thumb.headers.get("ETag")
    cached = requests.get(
        f"{server}{hit['thumbnail_url']}",
        headers={"If-None-Match": thumb.headers["ETag"]},
        timeout=30,
    )
    assert cached.status_code == 304
    meta = get(server, f"/api/images/{hit['id']}").json()
    assert meta["path"] == hit["path"] and len(meta["sha256"]) == 64
    assert get(server, "/api/stats").json()["images"] == 12
    assert get(server, "/healthz").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/search", {"q": "dog", "k": "abc"}, 400),
        ("/api/search", {"q": "dog", "k": "0"}, 400),
        ("/api/search", {"q": "dog", "k": "100000"}, 400),
        ("/api/search", {"q": "dog", "offset": "-1"}, 400),
        ("/api/search", {"q": "dog", "min_score": "nan"}, 400),
        ("/api/search", {"q": "dog", "date_from": "notadate"}, 400),
        ("/api/search", {"q": "x" * 5000}, 400),
        ("/api/search", {}, 400),
        ("/api/search", {"image_id": "999999"}, 404),
        ("/api/images/999999", {}, 404),
        ("/images/999999", {}, 404),
        ("/images/-1", {}, 404),
        ("/images/..%2f..%2fetc%2fpasswd", {}, 404),
        ("/thumbs/abc", {}, 404),
    ],
)
def test_bad_requests_get_json_errors(server: str, path: str, params: dict, status: int) -> None:
    response = get(server, path, **params)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert "error" in response.json() and "Traceback" not in response.text
    assert "root:" not in response.text


def test_bad_post_bodies(server: str) -> None:
    url = f"{server}/api/search"
    cases = [
        requests.post(url, data="{not json", headers={"Content-Type": "application/json"}),
        requests.post(url, json=["a", "list"]),
        requests.post(url, json={"text": 5}),
        requests.post(url, json={"image_b64": "!!!not base64"}),
        requests.post(url, json={"image_b64": base64.b64encode(b"not an image").decode()}),
        requests.post(url, json={"text": "a", "filters": "folder"}),
        requests.post(url, json={"text": "a", "k": True}),
        requests.post(url, files={"image": ("x.png", b"plain text")}),
    ]
    assert [r.status_code for r in cases] == [400] * len(cases)
    too_big = requests.post(url, files={"image": ("big.jpg", b"0" * (17 * 1024 * 1024))})
    assert too_big.status_code == 413 and "error" in too_big.json()


def test_page_escapes_the_query_and_shows_results(server: str) -> None:
    page = get(server, "/", q="<script>alert(1)</script>")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert page.text.count('src="/thumbs/') == 12
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
