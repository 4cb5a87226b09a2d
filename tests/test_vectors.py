"""The FAISS index by size: the IVF index is measured against exact search on embeddings with
CLIP's structure (text queries far from the image cloud), not assumed to be close enough."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from benchmarks.clip_like import ClipLike
from search import vectors as vectors_module
from search.errors import CollectionError
from search.halfvectors import HalfVectors
from search.vectors import ANN_THRESHOLD, Allowed, VectorIndex

DIM = 256


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, image vectors, text queries): ids are sparse, as catalog ids are after deletions."""
    clip = ClipLike(DIM, seed=3)
    images = clip.images(ANN_THRESHOLD + 5000)
    queries = clip.texts_for(images[clip.rng.integers(0, len(images), 100)])
    ids = np.arange(len(images), dtype=np.int64) * 3 + 7
    return ids, images, queries


@pytest.fixture(scope="module")
def ann(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> VectorIndex:
    ids, images, _ = data
    return VectorIndex.build(DIM, ids, images)


def exact(ids: np.ndarray, images: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(images @ query), kind="stable")[:k]]


def test_the_index_type_follows_the_collection_size(data, ann: VectorIndex) -> None:
    ids, images, _ = data
    small = VectorIndex.build(DIM, ids[:1000], images[:1000])
    assert small.ivf is None and not small.wants_rebuild()
    assert ann.ivf is not None and ann.kind.startswith("IVF") and not ann.wants_rebuild()
    small.add(ids[1000:], images[1000:])
    assert small.wants_rebuild()
    grown = VectorIndex.build(DIM, *small.contents())
    assert grown.ivf is not None and len(grown) == len(ids)
    assert sorted(grown.ids()) == sorted(ids)


def test_ann_recall_at_10_against_exact_text_queries(data, ann: VectorIndex) -> None:
    ids, images, queries = data
    recalls = []
    for query in queries:
        scores, found = ann.search(query, 10)
        expected = exact(ids, images, query, 10)
        recalls.append(len(set(found) & set(expected)) / 10)
        np.testing.assert_allclose(scores, images[(found - 7) // 3] @ query, atol=1e-5)
    assert np.mean(recalls) >= 0.95


@pytest.mark.parametrize("kind", ["ann", "compressed", "hubbed"])
def test_filters_on_the_ann_indexes_are_exact_and_complete(data, kind: str, request) -> None:
    ids, images, queries = data
    index = request.getfixturevalue(kind)
    rng = np.random.default_rng(1)
    for size in (5, 50, 3000):
        rows = np.sort(rng.choice(len(ids), size, replace=False))
        _, found = index.search(queries[0], 100, allowed=Allowed(ids[rows]))
        assert len(found) == min(100, size)
        assert set(found) <= set(ids[rows])
        expected = exact(ids[rows], images[rows], queries[0], 100)
        assert len(set(found) & set(expected)) >= 0.95 * len(expected)


def test_ann_pages_are_slices_of_one_ranking(data, ann: VectorIndex) -> None:
    _, _, queries = data
    for query in queries[:10]:
        top = ann.search(query, 20)[1]
        assert list(ann.search(query, 10)[1]) == list(top[:10])
        assert len(ann.search(query, 5000)[1]) == 5000  # a deep page probes more lists


def test_ann_add_remove_save_load(tmp_path: Path, data) -> None:
    ids, images, _ = data
    index = VectorIndex.build(DIM, ids, images)
    index.remove(ids[:10])
    index.add(np.array([1, 2]), images[:2])
    path = tmp_path / "vectors.faiss"
    index.save(path)
    loaded = VectorIndex.load(path)
    assert loaded.kind == index.kind
    mapped = VectorIndex.mapped(path)
    assert (mapped.kind, len(mapped)) == (index.kind, len(index))
    assert sorted(loaded.ids()) == sorted([1, 2, *ids[10:]])
    assert loaded.search(images[0], 1)[1][0] == 1
    held, vectors = loaded.contents()
    assert vectors.shape == (len(ids) - 8, DIM)
    expected = dict(zip([1, 2, *ids[10:].tolist()], [*images[:2], *images[10:]], strict=True))
    np.testing.assert_array_equal(vectors, np.array([expected[i] for i in held.tolist()]))


def test_shrinking_far_below_the_threshold_goes_back_to_flat(data) -> None:
    ids, images, _ = data
    index = VectorIndex.build(DIM, ids, images)
    index.remove(ids[ANN_THRESHOLD // 4 :])
    assert index.wants_rebuild() and VectorIndex.build(DIM, *index.contents()).ivf is None


def test_list_count_grows_with_the_collection() -> None:
    lists = [vectors_module.ideal_lists(n) for n in (25_000, 200_000, 1_000_000)]
    assert lists == sorted(lists) and lists[0] >= 256 and lists[-1] <= 8192


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")
def test_gpu_search_returns_the_cpu_ranking(data, ann: VectorIndex) -> None:
    """Whichever GPU path runs (faiss-gpu, or torch where faiss's CUDA does not load), it must
    give the CPU flat index's ids in its order, with its scores."""
    ids, images, queries = data
    cpu = VectorIndex.build(DIM, ids, images, ann=False)
    gpu = VectorIndex.build(DIM, ids, images, ann=False)
    assert gpu.use_gpu()
    for query in queries:
        cpu_scores, cpu_ids = cpu.search(query, 120)
        gpu_scores, gpu_ids = gpu.search(query, 120)
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-5)
        # Rounding may order near-equal scores either way; every other rank must agree.
        tied = np.isclose(cpu_scores[:, None], cpu_scores[None, :], atol=1e-5).sum(1) > 1
        assert np.array_equal(gpu_ids[:100][~tied[:100]], cpu_ids[:100][~tied[:100]])
    allowed = Allowed(ids[:50])  # filtered: the CPU index, with its selector
    assert gpu.search(queries[0], 20, allowed)[1].tolist() == (
        cpu.search(queries[0], 20, allowed)[1].tolist()
    )


def test_without_a_gpu_search_stays_on_the_cpu_index(data) -> None:
    ids, images, queries = data
    index = VectorIndex.build(DIM, ids[:2000], images[:2000])
    if gpu_available():
        pytest.skip("this machine has a GPU")
    assert not index.use_gpu()
    assert len(index.search(queries[0], 10)[1]) == 10


@pytest.fixture(scope="module")
def compressed(data, tmp_path_factory: pytest.TempPathFactory) -> VectorIndex:
    """The compressed index, streamed in as the catalog streams it, over the same vectors."""
    ids, images, _ = data
    half = HalfVectors(tmp_path_factory.mktemp("compressed") / "vectors.f16", DIM)
    chunks = ((ids[i : i + 7000], images[i : i + 7000]) for i in range(0, len(ids), 7000))
    return VectorIndex.compressed(images[::3], len(ids), chunks, half)


def test_the_compressed_index_re_ranks_to_exact_cosines(data, compressed: VectorIndex) -> None:
    ids, images, queries = data
    assert compressed.is_compressed and "PQ" in compressed.kind
    recalls = []
    for query in queries:
        scores, found = compressed.search(query, 10)
        recalls.append(len(set(found) & set(exact(ids, images, query, 10))) / 10)
        np.testing.assert_allclose(scores, images[(found - 7) // 3] @ query, atol=2e-3)  # fp16
        assert list(scores) == sorted(scores, reverse=True)
    assert np.mean(recalls) >= 0.95
    own = compressed.search(images[5], 1)
    assert own[1][0] == ids[5] and abs(own[0][0] - 1) < 2e-3


def test_the_compressed_index_holds_codes_not_vectors(tmp_path: Path, data, compressed) -> None:
    path = tmp_path / "vectors.faiss"
    compressed.save(path)
    assert compressed.ivf.code_size * 8 == DIM  # a bit per dimension: 64 bytes for CLIP's 512
    assert path.stat().st_size < len(compressed) * DIM * 4 / 5  # lists and padding included
    loaded = VectorIndex.load(path, compressed.half)
    query = data[2][0]
    assert np.array_equal(loaded.search(query, 10)[1], compressed.search(query, 10)[1])


def test_re_ranking_reads_rows_as_written_and_leaves_faiss_threads_as_they_were(
    data, compressed: VectorIndex
) -> None:
    ids, images, queries = data
    picked = ids[[9, 2, 9, 400]]  # any order, repeats allowed
    rows = compressed.half.read(picked)
    assert np.array_equal(rows, images[(picked - 7) // 3].astype(np.float16).astype(np.float32))
    threads = faiss.omp_get_max_threads()
    compressed.search(queries[0], 10)  # runs FAISS on one thread, then gives the count back
    assert faiss.omp_get_max_threads() == threads
    with pytest.raises(CollectionError, match="lacks row"):
        compressed.half.read(np.array([ids[-1] + 10]))  # never written: past the file's end


def test_the_compressed_index_adds_and_removes_without_retraining(data, tmp_path: Path) -> None:
    ids, images, _ = data
    half = HalfVectors(tmp_path / "vectors.f16", DIM)
    index = VectorIndex.compressed(images[::3], len(ids), [(ids[:-10], images[:-10])], half)
    index.remove(ids[:5])
    index.add(ids[-10:], images[-10:])
    assert len(index) == len(ids) - 5
    assert index.search(images[-1], 1)[1][0] == ids[-1]
    assert ids[0] not in index.search(images[0], 50)[1]


def test_a_graph_assigns_the_lists_that_comparing_every_centroid_does(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph is used from GRAPH_ASSIGNMENT_LISTS lists on, far beyond a test's size: here
    it is forced, and every vector must land in the list the exhaustive comparison picks."""
    ids, images, queries = data
    built = []
    for graph_from in (vectors_module.GRAPH_ASSIGNMENT_LISTS, 1):
        monkeypatch.setattr(vectors_module, "GRAPH_ASSIGNMENT_LISTS", graph_from)
        half = HalfVectors(tmp_path / f"{graph_from}.f16", DIM)
        built.append(VectorIndex.compressed(images[::3], len(ids), [(ids, images)], half))
    exhaustive, graph = built
    assert owners(graph) == owners(exhaustive)
    for query in queries[:20]:
        assert np.array_equal(graph.search(query, 10)[1], exhaustive.search(query, 10)[1])


@pytest.fixture(scope="module")
def hubbed(data, tmp_path_factory: pytest.TempPathFactory) -> VectorIndex:
    """The compressed index given the direction text queries share, as the prompts of a tag
    vocabulary give it (Catalog.text_direction)."""
    ids, images, _ = data
    text = ClipLike(DIM, seed=3).prompts_for(images).mean(axis=0)
    half = HalfVectors(tmp_path_factory.mktemp("hubbed") / "vectors.f16", DIM)
    return VectorIndex.compressed(images[::3], len(ids), [(ids, images)], half, text)


def test_the_hub_list_stops_growing_at_its_count(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 1B images even 1/1024 would be 980,000 hubs, read whole by every query."""
    ids, images, _ = data
    monkeypatch.setattr(vectors_module, "HUB_SHARE", 1 / 16)  # 1,875 of 30,000
    monkeypatch.setattr(vectors_module, "HUBS_AT_MOST", 300)
    text = ClipLike(DIM, seed=3).prompts_for(images).mean(axis=0)
    half = HalfVectors(tmp_path / "vectors.f16", DIM)
    index = VectorIndex.compressed(images[::3], len(ids), [(ids, images)], half, text)
    assert 200 <= len(hub_list(index)) <= 400


def hub_list(index: VectorIndex) -> np.ndarray:
    invlists = index.ivf.invlists
    return faiss.rev_swig_ptr(invlists.get_ids(index.lists), invlists.list_size(index.lists))


def test_the_hub_list_holds_the_images_furthest_along_the_text_direction(
    data, hubbed: VectorIndex, tmp_path: Path
) -> None:
    ids, images, _ = data
    along = images @ hubbed.hub
    hubs = hub_list(hubbed)
    assert sorted(hubs) == sorted(ids[along >= 1])
    assert 0.5 < len(hubs) / len(ids) / vectors_module.HUB_SHARE < 1.5
    hubbed.save(tmp_path / "vectors.faiss")
    loaded = VectorIndex.load(tmp_path / "vectors.faiss", hubbed.half)
    assert np.array_equal(loaded.hub, hubbed.hub) and loaded.lists == hubbed.lists
    farthest = images[np.argmax(along)]
    loaded.add(np.array([10**6]), farthest[None])  # a later image is judged by the same bar
    loaded.remove(hubs[:3])
    assert sorted(hub_list(loaded)) == sorted([*hubs[3:], 10**6])
    # the rows scored exactly in memory follow the list, as re-ranking would read them
    assert sorted(loaded.hubs.ids) == sorted(hub_list(loaded))
    assert np.array_equal(loaded.hubs.rows, loaded.half.read(loaded.hubs.ids))


def test_a_filter_that_allows_only_hubs_finds_them(data, hubbed: VectorIndex) -> None:
    _, _, queries = data
    some = np.sort(hub_list(hubbed))[::2][:7]
    scores, found = hubbed.search(queries[0], 10, Allowed(some))
    assert sorted(found) == sorted(some)
    np.testing.assert_allclose(scores, hubbed.half.read(found) @ queries[0], rtol=1e-6)


def test_text_queries_find_the_hubs_of_their_top_10_from_any_list(
    data, compressed: VectorIndex, hubbed: VectorIndex
) -> None:
    """A text query's exact top 10 holds images of other subjects that are there for their
    projection on the text direction: one probe finds them through the hub list, scored
    exactly, where the index without one must happen to probe their lists; and routing by the
    rest of the query spends the probes on its subject."""
    ids, images, queries = data
    hubs = set(hub_list(hubbed))
    recalls = {}
    for name, index in (("plain", compressed), ("hubbed", hubbed)):
        _, candidates = index.scan(queries, 1000, probes=1)
        if index.hubs is not None:
            candidates = np.hstack((candidates, index.hubs.top(queries, 10)[1]))
        found = []
        for query, row in zip(queries, candidates, strict=True):
            expected = set(exact(ids, images, query, 10))
            if name == "hubbed":
                assert expected & hubs <= set(index.search(query, 10)[1])
            rows = (row[row >= 0] - 7) // 3
            best = ids[rows[np.argsort(-(images[rows] @ query))[:10]]]
            found.append(len(expected & set(best)) / 10)
        recalls[name] = np.mean(found)
    assert recalls["hubbed"] > recalls["plain"] + 0.1  # measured: 0.47 -> 0.65
    for query in queries[:20]:
        scores, found = hubbed.search(query, 10)
        np.testing.assert_allclose(scores, images[(found - 7) // 3] @ query, atol=2e-3)


def owners(index: VectorIndex) -> dict[int, list[int]]:
    """The lists each id is in: two for a spilled image, the hub list's number for a hub."""
    invlists, found = index.ivf.invlists, {}
    for number in range(index.ivf.nlist):
        for i in faiss.rev_swig_ptr(invlists.get_ids(number), invlists.list_size(number)):
            found.setdefault(int(i), []).append(number)
    return found


def test_each_list_reaches_along_the_text_direction_as_far_as_its_farthest_image(
    data, hubbed: VectorIndex, tmp_path: Path
) -> None:
    ids, images, _ = data
    along = dict(zip(ids.tolist(), images @ hubbed.text, strict=True))
    farthest = np.full(hubbed.lists, -1.0)
    for i, numbers in owners(hubbed).items():
        for number in numbers:
            if number < hubbed.lists:
                farthest[number] = max(farthest[number], along[i])
    assert np.all(hubbed.reach <= farthest + 1e-3)  # an image's own t·x, from float16 rows
    assert np.abs(hubbed.reach - farthest).mean() < 0.005  # measured: 0.0024
    hubbed.save(tmp_path / "vectors.faiss")
    loaded = VectorIndex.load(tmp_path / "vectors.faiss", hubbed.half)
    number = int(np.argmax(loaded.reach))
    members = [i for i, numbers in owners(loaded).items() if number in numbers]
    loaded.remove([max(members, key=along.get)])
    assert loaded.reach[number] < hubbed.reach[number]  # a changed index finds it again


def test_routing_leans_towards_the_lists_that_reach_along_the_text_direction(
    data, hubbed: VectorIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list whose images reach far along t holds the ones a text query's lean towards t
    lifts into its top 10, though its centroid is no nearer the rest of the query."""
    ids, images, queries = data
    owner = owners(hubbed)
    wanted = [[owner[i] for i in exact(ids, images, query, 10)] for query in queries]

    def routed() -> float:
        lists = np.hstack((hubbed.probed(queries, 16), np.full((len(queries), 1), hubbed.lists)))
        return np.mean([found_share(w, found) for w, found in zip(wanted, lists, strict=True)])

    leaning = routed()
    monkeypatch.setattr(vectors_module, "REACH_WEIGHT", 0.0)
    assert leaning > routed() + 0.01  # measured: 0.951 -> 0.969


def test_each_list_spreads_as_far_as_its_images_scatter(
    data, hubbed: VectorIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list's spread, from a sample of its images read from disk, is their scatter about
    their mean; routing weighs it, and a changed index finds it again."""
    _, images, queries = data
    members: dict[int, list[int]] = {}
    for i, numbers in owners(hubbed).items():
        for number in numbers:
            members.setdefault(number, []).append(i)
    scatter = np.zeros(hubbed.lists)
    for number, found in members.items():
        if number < hubbed.lists and len(found) > 1:
            mean = images[(np.array(found) - 7) // 3].mean(axis=0)
            scatter[number] = np.sqrt(1 - mean @ mean)
    spread = hubbed.spread * np.sqrt(DIM)
    assert np.corrcoef(spread, scatter)[0, 1] > 0.9  # measured: 0.97
    assert abs(spread.mean() / scatter.mean() - 1) < 0.1  # measured: 1.06 (samples of ~17)
    wide = {}
    for weight in (0, 100):
        monkeypatch.setattr(vectors_module, "SPREAD_WEIGHT", weight)
        wide[weight] = hubbed.spread[hubbed.probed(queries, 16)].mean()
    assert wide[100] > wide[0] * 1.1  # measured: 1.26 times as wide
    hubbed.save(tmp_path / "vectors.faiss")
    loaded = VectorIndex.load(tmp_path / "vectors.faiss", hubbed.half)
    number = int(np.argmax(loaded.spread))
    loaded.remove(members[number][: len(members[number]) - 1])
    assert loaded.spread[number] == 0  # one image left: no scatter


def found_share(wanted: list[list[int]], lists: np.ndarray) -> float:
    """The share of images (each given by the lists it is in) that one of `lists` holds."""
    return float(np.mean([np.isin(numbers, lists).any() for numbers in wanted]))


def test_the_images_that_fit_their_list_worst_are_in_their_second_list_too(
    data, compressed: VectorIndex, tmp_path: Path
) -> None:
    """Streamed in 7,000 at a time: of each chunk, the fifth farthest from their nearest
    centroid are also in their second nearest's list; each is counted, found and removed once."""
    ids, images, queries = data
    centroids = compressed.ivf.quantizer.reconstruct_n(0, compressed.lists)
    nearest = np.argsort(-(images[:7000] @ centroids.T), axis=1)[:, :2]
    fit = (images[:7000] @ centroids.T).max(axis=1)
    owner = owners(compressed)
    spilled = np.array([len(owner[i]) == 2 for i in ids[:7000]])
    assert spilled.sum() == round(vectors_module.SPILL_SHARE * 7000)
    assert fit[spilled].max() <= fit[~spilled].min()
    for i, two in zip(ids[:7000], nearest, strict=True):
        assert sorted(owner[i]) == sorted(two[: len(owner[i])])
    assert len(compressed) == len(ids) and compressed.ivf.ntotal > len(ids)
    for query in queries[:10]:
        assert len(set(compressed.search(query, 1000)[1])) == 1000
    assert all(len(set(row)) == 10 for row in compressed.neighbours(queries, 10, 8)[1])
    probes, compressed.ivf.nprobe = compressed.ivf.nprobe, 3  # as an earlier release chose
    try:
        compressed.save(tmp_path / "vectors.faiss")
    finally:
        compressed.ivf.nprobe = probes
    loaded = VectorIndex.load(tmp_path / "vectors.faiss", compressed.half)
    assert len(loaded) == len(ids) and loaded.ivf.nprobe == probes  # this release's probes
    twice = ids[:7000][spilled][:5]
    loaded.remove(twice)
    assert len(loaded) == len(ids) - 5 and not set(twice) & set(loaded.ids())
    assert loaded.ivf.ntotal == compressed.ivf.ntotal - 10
