"""Groups of copies: real files through the tiny model (CLI and API), and planted copies among
thousands of vectors through a real IVF index, checked against every pair compared exactly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from indexer.items import Encoded
from indexer.plan import Sources, make_plan
from indexer.scan import FoundFile
from indexer.writer import Writer
from search.collection import Collection
from search.duplicates import duplicate_groups, find_pairs
from search.engine import SearchEngine
from search.errors import NotReady
from search.model import Encoder
from search.spec import ModelSpec
from search.vectors import VectorIndex
from tests.conftest import COPIES, TINY_THRESHOLD, run_cli, serving


def test_byte_copies_a_resize_and_a_recompressed_jpeg_form_one_group_best_first(
    copies: Path,
) -> None:
    found = json.loads(
        run_cli(
            "duplicates", "--data-dir", str(copies), "--threshold", TINY_THRESHOLD, "--json"
        ).stdout
    )
    assert found["count"] == 1  # distinct photos do not group
    images = found["groups"][0]["images"]
    assert {image["path"] for image in images} == COPIES
    assert images[0]["path"] == "red-apple.jpg" and images[0]["width"] == 320
    assert images[-1]["path"] == "copies/apple-half.jpg"  # fewest pixels, last
    same = {image["path"] for image in images if image["same_file"]}
    assert same == {"red-apple.jpg", "copies/apple-copy.jpg"}
    assert all(image["score"] >= float(TINY_THRESHOLD) for image in images)


def test_the_api_pages_the_same_groups_and_refuses_bad_parameters(copies: Path) -> None:
    with serving(copies) as (base, _):
        api = f"{base}/api/duplicates"
        found = requests.get(api, params={"threshold": TINY_THRESHOLD}, timeout=60).json()
        paths = [image["path"] for image in found["groups"][0]["images"]]
        assert paths[0] == "red-apple.jpg" and set(paths) == COPIES
        loose = requests.get(api, params={"threshold": 0.9, "limit": 1}, timeout=60).json()
        assert len(loose["groups"]) == 1 and loose["count"] >= 1
        for bad in ({"threshold": 0.5}, {"threshold": "nan"}, {"limit": 0}, {"k": 3}):
            answer = requests.get(api, params=bad, timeout=60)
            assert answer.status_code == 400 and answer.json()["code"] == "bad_request"
        page = requests.get(f"{base}/duplicates", params={"threshold": TINY_THRESHOLD}, timeout=60)
        assert page.ok and page.text.count("/thumbs/") == len(COPIES)


def planted(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, list[set[int]]]:
    """n unit vectors around a shared mean direction, as CLIP's are (cosine about 0.55 between
    two), with 100 groups of a photo and 2 to 4 near copies of it (cosine about 0.98), and a
    chain A-B-C whose links are copies (0.98) but whose ends are not (0.92). Returns the
    vectors and the groups expected, as catalog ids (row + 1)."""
    mean = rng.standard_normal(dim)
    vectors = mean / np.linalg.norm(mean) + 0.9 * rng.standard_normal((n, dim)) / dim**0.5
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = []
    for first in range(0, 600, 6):
        size = 3 + first % 4
        noise = 0.15 * rng.standard_normal((size - 1, dim)) / dim**0.5
        vectors[first + 1 : first + size] = vectors[first] + noise
        expected.append(set(range(first + 1, first + size + 1)))
    a, c = 700, 702
    step = rng.standard_normal(dim)
    step -= (step @ vectors[a]) * vectors[a]
    vectors[c] = 0.92 * vectors[a] + (1 - 0.92**2) ** 0.5 * step / np.linalg.norm(step)
    vectors[a + 1] = vectors[a] + vectors[c]
    expected.append({a + 1, a + 2})  # A with B; C is no copy of A, and B is taken
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), expected


def store(folder: Path, vectors: np.ndarray, spec: ModelSpec | None = None) -> Collection:
    """A collection whose catalog holds exactly these vectors, written by the real writer."""
    spec = spec or ModelSpec.from_args("ViT-B-32", "none")
    collection = Collection.create_or_open(folder, spec)
    files = [FoundFile("/photos", f"{i}.jpg", 1000 + i, i) for i in range(len(vectors))]
    sources = Sources([Path("/photos")], files, [])
    with collection.catalog.sessions() as session:
        writer = Writer(collection, make_plan(session, sources), sources, lambda seen: None)
    results = [
        Encoded(f, f"{i:064x}", v, 64, 64, None)
        for i, (f, v) in enumerate(zip(files, vectors, strict=True))
    ]
    with writer.saving():
        writer.write(results)  # type: ignore[arg-type]
    return collection


def test_groups_found_through_an_ivf_equal_those_of_every_pair_compared(tmp_path: Path) -> None:
    vectors, expected = planted(np.random.default_rng(0), 6000, 512)
    collection = store(tmp_path / "data", vectors)
    ivf = VectorIndex.build(512, np.arange(1, len(vectors) + 1), vectors, ann=True)
    assert ivf.ivf is not None

    groups = duplicate_groups(collection.catalog, find_pairs(collection.catalog, ivf, 0.9), 0.95)

    assert sorted(sorted(c.record.id for c in group) for group in groups) == sorted(
        sorted(group) for group in expected
    )
    similar = vectors @ vectors.T >= 0.95
    np.fill_diagonal(similar, False)
    for group in groups:  # each member is a copy of the group's first, by exact cosine
        best = group[0].record.id - 1
        assert group[0].record.id == min(c.record.id for c in group)  # same pixels: earliest
        assert all(similar[best, copy.record.id - 1] for copy in group[1:])
    linked = np.argwhere(np.triu(similar))  # every pair the planted copies and chain make
    assert len(linked) == sum(len(g) * (len(g) - 1) // 2 for g in expected[:-1]) + 2


def test_a_server_asked_during_a_slow_pass_is_told_to_ask_again(
    tmp_path: Path, encoder: Encoder
) -> None:
    """The pass runs on a thread of its own; a request does not wait for it past its limit
    (zero here), so searches keep their threads while it runs."""
    vectors, expected = planted(np.random.default_rng(1), 20_000, encoder.dim)
    engine = SearchEngine(store(tmp_path / "data", vectors, encoder.spec), encoder)
    engine.pairs_wait = 0
    with pytest.raises(NotReady, match="20,000 images; ask again"):
        engine.duplicates(0.95)
    deadline = time.monotonic() + 60
    while True:
        try:
            groups = engine.duplicates(0.95)
            break
        except NotReady:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    found = sorted(sorted(copy.record.id for copy in group) for group in groups)
    assert found == sorted(sorted(group) for group in expected)
