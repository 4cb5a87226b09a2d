"""The FAISS index, keyed by catalog image id rather than by position, and chosen by size: exact
below `ANN_THRESHOLD` vectors, an inverted-file (IVF) index above it, and above
`COMPRESS_THRESHOLD` an IVF of product-quantized codes whose candidates are re-ranked exactly.

Why IVF-Flat and not HNSW: text queries sit far from the image cloud (CLIP's modality gap), and
graph indexes lose recall on such out-of-distribution queries (HNSW reached 0.91 recall@10 at
efSearch 256 on our CLIP-like benchmark). IVF stores the exact vectors, so its scores are exact
cosines, it adds and removes ids in place, a filter's ID selector works inside it, a larger
`nprobe` only ever widens the candidate set (pages stay consistent), and probing every list is an
exact search to fall back on. Its lists are trained on the *centred* vectors: the component all
photos share would otherwise dominate every centroid and route text queries badly (_quantizer).

Why compress, and how: IVF-Flat keeps 2 KB per image in RAM, 20 GB at 10M. The compressed index
keeps 64 bytes of 4-bit PQ codes (FAISS's fast-scan layout, scanned with SIMD) and an 8-byte id:
82 bytes per image at 10M, centroids and list padding included. Codes that small cannot order a
text query's neighbours (the modality gap leaves them within a few hundredths of each other), so
they only pick `RERANK` candidates, whose float16 vectors are read from disk
(search/halfvectors.py) and scored exactly: the scores a user sees stay true cosines. Its lists
are trained like IVF-Flat's.

Why a hub list: a text query is mostly the direction every text shares (the modality gap), so
q·x = (q·t)(t·x) + q⊥·x, and the first term ranks images by t·x, their projection on the text
direction t, whatever the query asks. The images with the largest t·x ("hubs") come up in the
exact top 10 of queries about anything, from lists no routing by subject would probe: at 10M
CLIP-like vectors, 23% of a query's exact top 10 are such images of other subjects, and the
0.1% of images with the largest t·x hold all but 0.3% of them. They are kept in one extra
list that every query searches (HUB_SHARE), and the other lists are routed without t (probed).
Their codes cannot order them, all alike along t, so they are scored exactly, from their full
vectors held in memory (Hubs; 2 bytes an image). t is the mean of the texts the model embedded
for the collection's tags (Catalog.text_direction); without them the index has no hub list.
Below the hub list's cut, images far along t still rise into queries' top 10 from lists their
centroids would not route to, so routing adds to each list's score what the query's lean
towards t could lift its farthest image by: (q·t) times the list's reach along t, weighted by
REACH_WEIGHT (VectorIndex.reach; measured in the README, "Where 10M loses it now").

Why some images are in two lists: at 10M, most of what routing still misses is not far along t
but images whose own part (what no centroid shows) happens to lie along the query's, in lists
ranked ~600th to ~3,500th. The images far from their nearest centroid are the likeliest to be
such strangers, so the SPILL_SHARE of each added batch that fit their list worst go into their
second nearest list too, as ScaNN's spilled assignments do: 72 bytes more for each, 96 bytes an
image at 10M; recall@10 at 10M, 1,024 probes, from 0.926 to 0.949. A query takes twice its
candidates by code, and each id once (_found, best_distinct).

Why routing weighs how wide a list is: what a query finds in a list is its farthest image along
the query, not its centroid, and a list whose images scatter widely holds images far along any
direction. So each list's score adds SPREAD_WEIGHT standard deviations of its scatter along the
query (spread): at 10M, lists trained on 8 a list, recall@10 0.962 from 640 probes in 8.5 ms,
where 1,280 without it reach 0.958 in 10.2 ms. Lists trained on 16 a list (this release) are
narrower, and it buys them less.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from search.storage import writing

if TYPE_CHECKING:
    from search.gpu import GpuFlat
    from search.halfvectors import HalfVectors

log = logging.getLogger(__name__)

ANN_THRESHOLD = 25_000  # exact search is ~3 ms here on 2 CPU cores; it grows linearly above
COMPRESS_THRESHOLD = 2_000_000  # IVF-Flat would hold 4 GB of vectors in RAM
RERANK = 1_500  # compressed candidates re-ranked exactly (default_probes; the README)
# 524,288 vectors at 10M images: 1 GB while training, and 8 minutes of k-means. At 10M, routing
# (the share of the exact top 10 in the probed lists) at 512 probes: 0.943 trained on 8 a list,
# 0.976 on 16 (README, "Where 10M loses it now").
COMPRESSED_TRAINING_PER_LIST = 16
CODES_TRAINING = 65_536  # FAISS trains 4-bit codes on 4,096 of them: 16 centroids, 256 each
TRAINING_PER_LIST = 40  # faiss warns below 39 training points per list
KMEANS_ITERATIONS = 10
# From this many lists on, a build finds each vector's list through a graph; below, comparing
# every centroid (BLAS) is faster. Vectors a second on 2 cores, all centroids against the graph:
# 19,188 / 8,422 at 16,384 lists; 9,235 / 7,487 at 32,768; 4,666 / 6,164 at 65,536
# (benchmarks/list_assignment.py).
GRAPH_ASSIGNMENT_LISTS = 65_536
HUB_SHARE = 1 / 1024  # of a compressed index's images, scored exactly by every query (Hubs)
HUBS_AT_MOST = 16_384  # whatever the size: a query reads all their rows (32 MB as float32)
# Of a list's reach along the text direction in routing (probed). At 10M, 256 / 1,024 probes,
# the share of the exact top 10 in the lists searched: 0.898 / 0.943 without, 0.912 / 0.945 at
# 0.5, 0.907 / 0.932 at 1; at 30,000 images and 16 probes, 0.951, 0.969 and 0.986.
REACH_WEIGHT = 0.5
REACH_CANDIDATES = 4  # of a list's images by code, scored exactly for its reach
# Of each batch added to a compressed index, the images that fit their subject list worst, which
# also go into their second nearest (README, "Where 10M loses it now"): 72 more bytes each.
SPILL_SHARE = 0.2
# Routing counts on a list's images far along the query, not on its centroid alone: it adds
# this many standard deviations of the list's scatter along the query (probed, spread). At 10M,
# 1,000 queries, 640 probes: recall@10 0.957 at 5, 0.962 at 10; without, 0.945 at 768 probes
# (README, "Where 10M loses it now").
SPREAD_WEIGHT = 10
SPREAD_SAMPLE = 16  # images a list, read from disk for its spread


def ideal_lists(n: int) -> int:
    """About 4·sqrt(n) lists (the usual rule, as autofaiss uses), a power of two."""
    return 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))


def compresses(n: int) -> bool:
    """Whether a collection of `n` vectors gets the compressed index."""
    return n >= COMPRESS_THRESHOLD


def compressed_lists(n: int) -> int:
    """16·√n lists, a power of two, the top of FAISS's advice (4 to 16·√n, autofaiss's
    65,536 at 10M): routing, not the codes, limits a compressed index's recall once many
    subjects share a list (README, "Collections beyond RAM"); and at most n / 8, so each
    list has training points."""
    return 2 ** math.floor(math.log2(max(1.0, min(16 * math.sqrt(n), n / 8))))


def subquantizers(dim: int) -> int:
    """4-bit PQ over sub-vectors of 4 dimensions (a bit per dimension), at most 64 bytes: see
    the README for what else was measured."""
    return min(128, dim // 4)


def default_probes(lists: int, compressed: bool = False) -> int:
    """A thirty-second of the lists; 3/256 of a compressed index's, 384 of 32,768 at 10M. Its
    small lists hold about one subject each, but a text query's exact top 10 also holds
    strangers from lists its routing ranks in the hundreds. At 10M, trained on 8 a list and
    routed by the lists' spread, recall@10 of 1,000 queries was 0.959 at 512 probes, 0.962 at
    640; trained on 16 a list, the probed lists hold as much of the exact top 10 from fewer
    (0.983 at 512, estimated), and fewer codes cost less time (README, "Where 10M loses it
    now"). Set when an index is loaded, not kept in its file: an index built by an earlier
    release searches as this one does."""
    return max(32, lists * 3 // 256 if compressed else lists // 32)


class Allowed:
    """The ids a filter allows, as a bitmap FAISS tests each candidate against: one bit per
    catalog id (ids are dense), so 1.25 MB whether a filter allows 1% or all of 10M images,
    where a hash set of ids took about 50 bytes an id. Built once per filter and generation."""

    def __init__(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.count = len(ids)
        flags = np.zeros(int(ids.max()) + 1 if len(ids) else 0, dtype=bool)
        flags[ids] = True
        self.bitmap = np.packbits(flags, bitorder="little")  # bit i of byte i >> 3, as FAISS reads
        self.selector = faiss.IDSelectorBitmap(self.bitmap.nbytes, faiss.swig_ptr(self.bitmap))

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return self.bitmap.nbytes

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` the filter allows, as the selector would answer for each."""
        inside = ids < self.bitmap.size * 8
        bits = self.bitmap[ids[inside] >> 3] >> (ids[inside] & 7).astype(np.uint8)
        allowed = np.zeros(len(ids), dtype=bool)
        allowed[inside] = (bits & 1).astype(bool)
        return allowed


class Hubs:
    """The hub list's images, scored exactly rather than by code: all of them lie far along
    the text direction, where the codes cannot tell them apart (at 3M CLIP-like vectors the
    hub list's best 1,000 by code held 0.904 of the hubs in a query's exact top 10, and the
    index found 0.940 of that top 10; scored exactly, 0.977). Their float16 rows from disk, as
    float32 for one matrix product: 2 bytes an image of the collection (20 MB at 10M), read
    whole by every query (README, "Where 10M loses it now")."""

    def __init__(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self.ids, self.rows = ids.astype(np.int64), rows

    @classmethod
    def read(cls, ivf: faiss.IndexIVF, number: int, half: HalfVectors) -> Hubs:
        ids = _list(ivf, number)
        return cls(ids, half.read(ids) if len(ids) else np.empty((0, ivf.d), np.float32))

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.rows.nbytes

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self.ids = np.concatenate([self.ids, ids])
        rows = rows.astype(np.float16).astype(np.float32)  # as re-ranking reads them
        self.rows = np.concatenate([self.rows, rows])

    def remove(self, ids: np.ndarray) -> None:
        kept = ~np.isin(self.ids, ids)
        self.ids, self.rows = self.ids[kept], self.rows[kept]

    def top(
        self, queries: np.ndarray, k: int, allowed: Allowed | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's k best hubs (those `allowed`) by exact score, rows padded with id -1."""
        ids, rows = self.ids, self.rows
        if allowed is not None:
            keep = allowed.contains(ids)
            ids, rows = ids[keep], rows[keep]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        k = min(k, len(ids))
        for start in range(0, len(queries) if k else 0, 256):  # 40 MB of scores at 10M
            block = queries[start : start + 256] @ rows.T
            best = np.argpartition(-block, k - 1, axis=1)[:, :k]
            scores[start : start + 256, :k] = np.take_along_axis(block, best, axis=1)
            found[start : start + 256, :k] = ids[best]
        return scores, found


class VectorIndex:
    """Inner-product search over L2-normalised vectors: scores are cosine similarities."""

    def __init__(self, index: faiss.Index, half: HalfVectors | None = None) -> None:
        self.index = index
        if isinstance(index, faiss.IndexIVF):
            # Queries come one at a time: split each over the lists it probes, not over the
            # queries (one query, one thread). At 1M, 128 probes: 5.7 -> 3.0 ms on 2 threads.
            index.parallel_mode = 1
            index.nprobe = default_probes(index.nlist, self.is_compressed)
        self.dim = index.d
        self.half = half  # the full vectors of a compressed index
        self.hub = _hub_centroid(index)  # a compressed index's hub list, if it has one
        self.hubs = None if self.hub is None or half is None else Hubs.read(index, self.lists, half)
        self._assigner: faiss.Index | None = None  # see _subjects
        self._reach: np.ndarray | None = None  # see reach
        self._spread: np.ndarray | None = None  # see spread
        self._held: int | None = None  # see __len__
        self._gpu: GpuFlat | None = None
        self.file: FileIdentity | None = None  # the saved file it was read from (see read_from)

    @classmethod
    def flat(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def build(
        cls, dim: int, ids: np.ndarray, vectors: np.ndarray, ann: bool | None = None
    ) -> VectorIndex:
        """The right index for this many vectors (or the one `ann` asks for)."""
        if not (len(ids) >= ANN_THRESHOLD if ann is None else ann):
            index = cls.flat(dim)
        else:
            index = cls(_train_ivf(vectors, ideal_lists(len(ids))))
        index.add(ids, vectors)
        return index

    @classmethod
    def compressed(
        cls,
        sample: np.ndarray,
        n: int,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        half: HalfVectors,
        text: np.ndarray | None = None,
    ) -> VectorIndex:
        """Train on `sample` (used up: centred in place), then add the collection chunk by
        chunk, writing each chunk's full vectors to `half` as it goes: memory holds the codes
        and one chunk, never the collection. `text`: the direction text queries share, for the
        hub list."""
        index = cls(_train_compressed(sample, n, text), half)
        with _assignment(index):
            for ids, vectors in chunks:
                index.add(ids, vectors)
        return index

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        return self.index if isinstance(self.index, faiss.IndexIVF) else None

    @property
    def is_compressed(self) -> bool:
        return isinstance(self.index, faiss.IndexIVFPQFastScan)

    @property
    def lists(self) -> int:
        """The IVF's lists by subject: all of them but the hub list."""
        return self.ivf.nlist - (self.hub is not None)

    @property
    def kind(self) -> str:
        if self.is_compressed:
            ivf = self.ivf
            found = f"IVF{self.lists},PQ{subquantizers(self.dim)}x4fs (nprobe {ivf.nprobe}"
            if self.hub is not None:
                hubs = ivf.invlists.list_size(self.lists)
                found += f", a hub list of {hubs:,} scored exactly by every query"
            spilled = ivf.ntotal - len(self)
            return f"{found}, {spilled:,} in two lists, {RERANK} candidates re-ranked exactly)"
        if ivf := self.ivf:
            return f"IVF{ivf.nlist},Flat (centred lists, nprobe {ivf.nprobe})"
        return "flat (exact inner product)"

    def __len__(self) -> int:
        """The images held: a compressed index holds some twice (SPILL_SHARE), so it counts
        its distinct ids once after a load or a removal (0.24 s at 10M) and keeps count."""
        if not self.is_compressed:
            return int(self.index.ntotal)
        if self._held is None:
            self._held = len(self.ids())
        return self._held

    def wants_rebuild(self) -> bool:
        """True when the collection has outgrown this index type or list count (or shrunk
        below it): flat past the threshold, IVF once the ideal list count doubled or halved,
        and either kind once it crosses the compression threshold (a quarter below it back)."""
        n = len(self)
        ivf = self.ivf
        if ivf is None:
            return n >= ANN_THRESHOLD or compresses(n)
        if self.is_compressed:
            return n < COMPRESS_THRESHOLD * 3 // 4 or _doubled(compressed_lists(n), self.lists)
        return n < ANN_THRESHOLD // 2 or compresses(n) or _doubled(ideal_lists(n), ivf.nlist)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
            ids = np.asarray(ids, dtype=np.int64)
            if self.half is not None:
                self.half.write(ids, vectors)
            if self.is_compressed:
                held = len(self)
                self._add_to_lists(ids, vectors)
                self._held = held + len(ids)
            else:
                self.index.add_with_ids(vectors, ids)
            self._gpu = self._reach = self._spread = self.file = None  # no longer the file's

    def _add_to_lists(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """A hub (its inner product with the hub centroid 1 or more: _hub_for) goes to the hub
        list, any other vector to its nearest subject's, and the SPILL_SHARE of those that fit
        theirs worst to their second nearest too."""
        hubs = np.zeros(len(ids), dtype=bool) if self.hub is None else vectors @ self.hub >= 1
        if self.hubs is not None and hubs.any():
            self.hubs.add(ids[hubs], vectors[hubs])
        lists = np.full((len(ids), 2), -1, dtype=np.int64)
        lists[hubs, 0] = self.lists
        if (~hubs).any():
            lists[~hubs] = _spilled(*_nearest_two(self._subjects, vectors[~hubs]))
        for column in lists.T:  # one copy of a vector at a time: _place finds it by itself
            placed = column >= 0
            _place(self.ivf, ids[placed], vectors[placed], column[placed])

    @property
    def _subjects(self) -> faiss.Index:
        """What finds an added vector's subject list: the quantizer, less the hub centroid if
        there is one (an index of its own, made once), or a graph while a large build adds."""
        if self._assigner is None:
            quantizer = self.ivf.quantizer
            if self.hub is not None:
                subjects = faiss.IndexFlatIP(self.dim)
                subjects.add(quantizer.reconstruct_n(0, self.lists))
                quantizer = subjects
            self._assigner = quantizer
        return self._assigner

    def remove(self, ids: Iterable[int]) -> None:
        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            if self.hubs is not None:
                self.hubs.remove(ids)
            self._gpu = self._reach = self._spread = self._held = self.file = None

    def search(
        self, query: np.ndarray, k: int, allowed: Allowed | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query vector. `allowed` restricts the search to those
        ids inside FAISS, so a filter never costs results: the IVF probes more lists the fewer
        ids a filter allows, and falls back to probing all of them (an exact search) if that
        still finds fewer than k."""
        n = len(self) if allowed is None else len(allowed)
        k = min(k, n)
        if k <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        gpu = self._gpu
        if allowed is None and gpu is not None and k <= gpu.max_k:
            return gpu.search(query, k)
        sel = None if allowed is None else allowed.selector
        if self.ivf is None:
            params = None if sel is None else faiss.SearchParameters(sel=sel)
            return _found(*self.index.search(query, k, params=params))
        if self.half is None:
            return self._probe(query, k, n, sel)
        with _one_thread():
            _, ids = self._probe(query, min(n, max(k, RERANK)), n, sel)
        scores = self.half.read(ids) @ query[0]
        if self.hubs is not None:
            hub_scores, hub_ids = _found(*self.hubs.top(query, k, allowed))
            scores, ids = np.concatenate([scores, hub_scores]), np.concatenate([ids, hub_ids])
        best = np.argsort(-scores, kind="stable")[:k]
        return scores[best], ids[best]

    def _probe(
        self, query: np.ndarray, k: int, n: int, sel: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The IVF's top k, probing enough lists to expect ample candidates of the `n` allowed
        ids (four times k, and more the rarer they are): a function of the filter and of
        offset + k, so a deeper page only ever widens the candidate set; all lists (an
        exhaustive scan) if that still finds fewer than k."""
        ivf = self.ivf
        share = n / len(self)
        # Scanning every list of 10M codes costs ~100 ms: a compressed index widens by the
        # square root of the share (a 1% filter probes ten times the lists, not a hundred).
        widen = share**0.5 if self.is_compressed else share
        probes = max(ivf.nprobe / widen, 4 * k * self.lists / n)
        probes = min(self.lists, math.ceil(probes))
        wanted = 2 * k if self.is_compressed else k  # a spilled image comes twice by code
        scores, ids = _found(*self.scan(query, wanted, probes, sel))
        if len(ids) < k and probes < self.lists:
            scores, ids = _found(*self.scan(query, wanted, self.lists, sel))
        return scores[:k], ids[:k]

    def scan(
        self, queries: np.ndarray, k: int, probes: int, sel: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The IVF's top k of each query by code, in its `probes` nearest lists (probed): not
        in the hub list, whose images Hubs scores exactly."""
        if not self.is_compressed:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=probes)
            return self.ivf.search(queries, k, params=params)
        return self._preassigned(queries, k, self.probed(queries, probes), sel)

    def _preassigned(
        self, queries: np.ndarray, k: int, lists: np.ndarray, sel: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top k of each query by code in the lists given for it (a row of `lists`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        unused = np.zeros(lists.shape, dtype=np.float32)  # coarse scores: codes are not residuals
        params = faiss.SearchParametersIVF(sel=sel, nprobe=lists.shape[1])
        ptr = faiss.swig_ptr
        self.ivf.search_preassigned_c(
            len(queries), ptr(queries), k, ptr(lists), ptr(unused), ptr(scores), ptr(ids),
            False, params,
        )  # fmt: skip
        return scores, ids

    def probed(self, queries: np.ndarray, probes: int) -> np.ndarray:
        """Each query's `probes` subject lists by routing score: what the query's farthest image
        in the list would score, estimated as the centroid's score plus SPREAD_WEIGHT standard
        deviations of the list's scatter along the query (spread). A list's images scatter
        about its centroid, and a wide list holds images far along any direction. The wide
        lists are the large ones, so each probe scans more: at 10M, 1,000 queries, 768 probes
        without it scan 327,000 codes and hold 0.953 of the exact top 10 (with the hub list),
        640 with it 452,000 and 0.969, where 1,280 without scan 539,000 and hold 0.971 (README,
        "Where 10M loses it now").

        With a hub list, the lists are chosen by the query less its part along the text
        direction t: that part ranks images by t·x whatever their subject, which the hub list
        answers for, and it would spend probes on the lists whose centroids lean towards t (at
        3M CLIP-like vectors, 128 probes and the hub list hold 0.938 of the exact top 10 routed
        by the whole query, 0.977 by the rest of it); to that rest's score each list adds
        REACH_WEIGHT · (q·t) · its reach along t, for the images below the hub list's cut (at
        10M, 256 probes: 0.898 to 0.912 of the exact top 10 in the probed lists and the hub
        list). The centroids are compared by one matrix product, not FAISS's search: 1.6
        against 2.9 ms for one query and 32,768 lists."""
        routed = queries
        if self.hub is not None:
            along = queries @ self.text
            routed = queries - np.outer(along, self.text)
            lean = REACH_WEIGHT * np.maximum(along, 0)  # image queries may not lean towards t
        wide = SPREAD_WEIGHT * np.linalg.norm(routed, axis=1)  # spread is along one direction
        centroids = faiss.downcast_index(self.ivf.quantizer).get_xb()
        centroids = faiss.rev_swig_ptr(centroids, self.lists * self.dim).reshape(self.lists, -1)
        lists = np.empty((len(queries), probes), dtype=np.int64)
        for start in range(0, len(queries), 256):  # 32 MB of scores at 32,768 lists
            block = slice(start, start + 256)
            scores = routed[block] @ centroids.T
            scores += np.outer(wide[block], self.spread)
            if self.hub is not None:
                scores += np.outer(lean[block], self.reach)
            lists[block] = np.argpartition(-scores, probes - 1, axis=1)[:, :probes]
        return lists

    @property
    def text(self) -> np.ndarray:
        """The unit text direction t of an index with a hub list (its centroid's direction)."""
        return (self.hub / np.linalg.norm(self.hub)).astype(np.float32)

    @property
    def reach(self) -> np.ndarray:
        """How far along the text direction t each subject list reaches: the largest t·x of its
        images (-1 for an empty list). Its REACH_CANDIDATES best by code, t as the query,
        scored exactly: the codes alone overstate it by their error, and routing by what they
        say finds less. Found by the first query after the index is loaded or changed: 1.1 s
        at 10M (32,768 lists), 0.01 s at 30,000 images."""
        if self._reach is None:
            text = self.text
            along = np.full((self.lists, REACH_CANDIDATES), -1.0, dtype=np.float32)
            for start in range(0, self.lists, 4096):  # 4,096 copies of t: 8 MB at 512-d
                lists = np.arange(start, min(self.lists, start + 4096), dtype=np.int64)[:, None]
                _, ids = self._preassigned(
                    np.repeat(text[None], len(lists), 0), REACH_CANDIDATES, lists
                )
                block, found = along[start : start + len(lists)], ids >= 0
                block[found] = self.half.read(ids[found]) @ text
            self._reach = along.max(axis=1)
        return self._reach

    @property
    def spread(self) -> np.ndarray:
        """How widely each subject list's images scatter about their mean along one direction:
        their scatter √(1 - |mean|²) (unit vectors) over √d. The mean's square comes from the
        inner products between SPREAD_SAMPLE of the list's images, spaced evenly through it
        and read from disk; 0 for a list of fewer than two. Found with the reach, by the first
        query after the index is loaded or changed: 2.3 s at 10M (524,288 rows)."""
        if self._spread is None:
            self._spread = np.zeros(self.lists, dtype=np.float32)
            for start in range(0, self.lists, 4096):  # 65,536 rows: 128 MB at 512-d
                numbers = range(start, min(self.lists, start + 4096))
                samples = [_spaced(_list(self.ivf, number), SPREAD_SAMPLE) for number in numbers]
                self._spread[numbers] = self._scatter(samples) / math.sqrt(self.dim)
        return self._spread

    def _scatter(self, samples: list[np.ndarray]) -> np.ndarray:
        """√(1 - |mean|²) of each sample's rows, |mean|² without bias: the mean inner product
        of two different rows, (|Σx|² - Σ|x|²) / (s(s - 1))."""
        sizes = np.array([len(ids) for ids in samples])
        scatter = np.zeros(len(samples), dtype=np.float32)
        some = sizes > 1
        if some.any():
            rows = self.half.read(np.concatenate([samples[i] for i in np.flatnonzero(some)]))
            starts = np.cumsum(sizes[some]) - sizes[some]
            sums = np.add.reduceat(rows, starts)
            squares = np.add.reduceat(np.einsum("ij,ij->i", rows, rows), starts)
            pairs = sizes[some] * (sizes[some] - 1)
            mean_square = (np.einsum("ij,ij->i", sums, sums) - squares) / pairs
            scatter[some] = np.sqrt(np.maximum(1 - mean_square, 0))
        return scatter

    def neighbours(self, queries: np.ndarray, k: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest (scores, ids) of each of many queries, an IVF probing `probes` lists
        (enough for what lies next to a query, as a copy lies next to its original). Rows are
        padded with id -1; a compressed index's candidates are scored from the full vectors."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        if self.ivf is None:
            return self.index.search(queries, k)
        if self.half is None:
            return self.scan(queries, k, min(probes, self.lists))
        scores, ids = self.scan(queries, 2 * k, min(probes, self.lists))  # spills come twice
        found = ids >= 0
        rows = self.half.read(ids[found]).reshape(-1, self.dim)
        scores[found] = np.einsum("ij,ij->i", rows, np.repeat(queries, found.sum(1), axis=0))
        if self.hubs is not None:
            hub_scores, hub_ids = self.hubs.top(queries, k)
            scores, ids = np.hstack((scores, hub_scores)), np.hstack((ids, hub_ids))
        return best_distinct(scores, ids, k)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) held, in no particular order (not of a compressed index, whose
        full vectors are on disk)."""
        ivf = self.ivf
        if ivf is None:
            return self.ids(), self.index.index.reconstruct_n(0, len(self))
        assert not self.is_compressed, "a compressed index holds codes, not vectors"
        ids = _listed(ivf)  # IVF-Flat holds each id once, in the codes' order
        codes = np.concatenate([_list(ivf, number, codes=True) for number in range(ivf.nlist)])
        return ids, codes.view(np.float32).reshape(len(ids), self.dim)

    def ids(self) -> np.ndarray:
        """Every id held, once (an IVF's in ascending order)."""
        ivf = self.ivf
        if ivf is None:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        listed = _listed(ivf)
        held = np.zeros(listed.max(initial=-1) + 1, dtype=bool)  # ids are dense: 10 MB at 10M
        held[listed] = True
        return np.flatnonzero(held)

    def use_gpu(self) -> bool:
        """Answer unfiltered queries with an exact search on the GPU when there is one and the
        vectors fit (search/gpu.py). Filtered queries stay on the CPU index, whose ID selectors
        apply the filter inside the search; a compressed index stays there too (its vectors
        do not fit a GPU by definition)."""
        from search.gpu import gpu_flat

        self._gpu = None if self.is_compressed else gpu_flat(*self.contents())
        return self._gpu is not None

    def save(self, path: Path) -> None:
        """Write atomically: readers see the old file or the new one, never a partial one; the
        full vectors it re-ranks from reach the disk first."""
        if self.half is not None:
            self.half.sync()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with writing(f"saving the vector index {path}", tmp):
            faiss.write_index(self.index, str(tmp))
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)

    @classmethod
    def mapped(cls, path: Path) -> VectorIndex:
        """The saved index memory-mapped, not read: enough to tell its type and size."""
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC))

    @classmethod
    def load(cls, path: Path, half: HalfVectors | None = None) -> VectorIndex:
        """`half`: where a compressed index's full vectors are, if this file is one."""
        # read_index returns the concrete index and owns it; wrapping it again with
        # downcast_index would leave a pointer that dies with this temporary.
        file = _identity(path)
        index = faiss.read_index(str(path))
        loaded = cls(index, half if isinstance(index, faiss.IndexIVFPQFastScan) else None)
        loaded.file = file if _identity(path) == file else None  # not replaced while read
        return loaded

    def read_from(self, path: Path) -> bool:
        """Whether `path` is the very file this index was read from, renamed since to a new
        generation whose rows changed but not their vectors (Collection.carry_vectors)."""
        return self.file is not None and _identity(path) == self.file


FileIdentity = tuple[int, int, int, int]


def _identity(path: Path) -> FileIdentity | None:
    """A file as the file system tells it apart: a file written anew has a new time, and its
    inode number may be an old one's; a renamed file keeps both."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _found(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A single query's results, without padding, each id once (the first, best, of a spill)."""
    kept = _first(ids[0])
    kept = kept[ids[0][kept] >= 0]
    return scores[0][kept], ids[0][kept]


def _first(ids: np.ndarray) -> np.ndarray:
    """The positions of each id's first occurrence, in order."""
    return np.sort(np.unique(ids, return_index=True)[1])


def best_distinct(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (scores, ids), each id once, padded with id -1."""
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    for row_scores, row_ids in zip(scores, ids, strict=True):  # views: written in place
        repeated = np.ones(len(row_ids), dtype=bool)
        repeated[_first(row_ids)] = False
        row_scores[repeated | (row_ids < 0)], row_ids[repeated] = -np.inf, -1
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _listed(ivf: faiss.IndexIVF) -> np.ndarray:
    """Every list's ids, list by list: a spilled image's twice."""
    return np.concatenate([_list(ivf, number) for number in range(ivf.nlist)])


def _list(ivf: faiss.IndexIVF, number: int, codes: bool = False) -> np.ndarray:
    """One inverted list's ids, or its codes as bytes."""
    lists, size = ivf.invlists, ivf.invlists.list_size(number)
    if not size:  # an empty list's pointer is null, which FAISS's numpy view takes for float32
        return np.empty(0, dtype=np.uint8 if codes else np.int64)
    if codes:
        return faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size).copy()
    return faiss.rev_swig_ptr(lists.get_ids(number), size).copy()


def _spaced(ids: np.ndarray, count: int) -> np.ndarray:
    """`count` of `ids` spaced evenly through them (all, if fewer): a list holds its images in
    the order they were added, and neighbours in that order are often of one event."""
    if len(ids) <= count:
        return ids
    return ids[np.linspace(0, len(ids) - 1, count).astype(np.int64)]


def _train_ivf(vectors: np.ndarray, lists: int) -> faiss.IndexIVFFlat:
    """An IVF-Flat whose lists are trained on a sample of `vectors`."""
    rng = np.random.default_rng(0)
    sample_size = min(len(vectors), TRAINING_PER_LIST * lists)
    sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
    quantizer = _quantizer(sample, lists)
    ivf = faiss.IndexIVFFlat(quantizer, quantizer.d, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    return _owning(ivf, quantizer)


def _train_compressed(
    sample: np.ndarray, n: int, text: np.ndarray | None
) -> faiss.IndexIVFPQFastScan:
    """IVF-PQ fast-scan, with a hub list when `text` is known. The codes are of the vectors
    themselves, not of their residuals from a list's mean (README, "Where 10M loses it now").
    `sample` is centred in place (_quantizer), so what else it gives is taken first."""
    hub = None if text is None else _hub_for(sample, text, n)
    codes_sample = np.array(sample[:CODES_TRAINING], dtype=np.float32)
    quantizer = _quantizer(sample, compressed_lists(n))
    if hub is not None:
        quantizer.add(hub[None])
    dim = quantizer.d
    ivf = faiss.IndexIVFPQFastScan(
        quantizer, dim, quantizer.ntotal, subquantizers(dim), 4, faiss.METRIC_INNER_PRODUCT
    )
    ivf.by_residual = False
    ivf.train(codes_sample)  # the codes: the lists are set
    return _owning(ivf, quantizer)


def _quantizer(sample: np.ndarray, lists: int) -> faiss.IndexFlatIP:
    """Centroids of a spherical k-means over the *centred* sample, compared with vectors and
    queries as they are. Centred, because the component every photo shares would otherwise
    dominate every centroid. Queries are not centred: a list's members score q·x = q·μ +
    q·(x - μ), so q·centroid orders the lists as their members would, while centring the
    query too adds -μ·centroid, a bias per list that decides between the near-equal scores of
    a text query (at 1M vectors, 4,096 lists and 64 probes: recall@10 0.909 centred, 0.935
    not). Vectors are assigned the same way: centred or not gave the same recall. A float32
    `sample` is centred in place: a copy would double a build's largest array (1 GB at 10M)."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    sample -= sample.mean(axis=0)
    centroids = faiss.IndexFlatIP(sample.shape[1])
    centroids.add(_kmeans(sample, lists))
    return centroids


def _hub_for(sample: np.ndarray, text: np.ndarray, n: int) -> np.ndarray | None:
    """The hub list's centroid: the unit text direction divided by the projection on it that
    HUB_SHARE of the sample exceeds (or HUBS_AT_MOST of `n` images, if fewer), so that an image
    is a hub when its inner product with the centroid is 1 or more. None if that projection is
    not between 0 and 1."""
    text = np.asarray(text, dtype=np.float32) / np.linalg.norm(text)
    bar = float(np.quantile(sample @ text, 1 - min(HUB_SHARE, HUBS_AT_MOST / n)))
    return text / bar if 0 < bar < 1 else None


def _hub_centroid(index: faiss.Index) -> np.ndarray | None:
    """A compressed index's hub centroid, if it has a hub list: its last list, whose centroid
    alone is longer than a unit vector (_hub_for; k-means centroids are unit vectors)."""
    if not isinstance(index, faiss.IndexIVFPQFastScan) or index.nlist < 2:
        return None
    last = index.quantizer.reconstruct(index.nlist - 1)
    return last if np.linalg.norm(last) > 1.001 else None


def _kmeans(vectors: np.ndarray, clusters: int) -> np.ndarray:
    """Spherical k-means in one level (two levels, cheaper to train, cost a quarter of the
    recall: 0.68 against 0.91 at 1M); as few as one point per centroid is allowed without a
    warning (a compressed index trains on COMPRESSED_TRAINING_PER_LIST)."""
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        clusters,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=1,
        min_points_per_centroid=1,
    )
    kmeans.train(vectors)
    return kmeans.centroids


@contextlib.contextmanager
def _assignment(index: VectorIndex) -> Iterator[None]:
    """While building, from GRAPH_ASSIGNMENT_LISTS lists on, each vector's list is found
    through an HNSW graph over the centroids: image vectors are in distribution, where a graph
    finds the nearest centroid in a fraction of the comparisons. Searched 64 wide it matched
    the exhaustive comparison's recall at 1M, 16 wide it lost 0.017; 32 halves the time of 64.
    Queries are still routed by comparing every centroid: text queries lie outside the image
    cloud, where graphs get lost (recall@10 0.83 against 0.995, 300k vectors). L2 orders the
    unit centroids as the inner product does, and is a metric a graph navigates."""
    if index.lists < GRAPH_ASSIGNMENT_LISTS:
        yield
        return
    graph = faiss.IndexHNSWFlat(index.dim, 32)
    graph.hnsw.efSearch = 32
    graph.add(index.ivf.quantizer.reconstruct_n(0, index.lists))  # not the hub centroid
    index._assigner = graph
    try:
        yield
    finally:
        index._assigner = None


def _nearest_two(assigner: faiss.Index, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How well each vector fits its nearest list (higher is better, comparable within one
    call), and its two nearest lists."""
    scores, lists = assigner.search(np.ascontiguousarray(vectors, dtype=np.float32), 2)
    inner = assigner.metric_type == faiss.METRIC_INNER_PRODUCT  # a graph compares by L2
    return (scores[:, 0] if inner else -scores[:, 0]), lists


def _spilled(fit: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Each vector's lists: its nearest, and for the SPILL_SHARE of them (of this batch) that
    fit it worst, the second nearest; -1 for none."""
    lists = nearest.copy()
    lists[np.argsort(fit, kind="stable")[round(SPILL_SHARE * len(fit)) :], 1] = -1
    return lists


def _place(ivf: faiss.IndexIVF, ids: np.ndarray, vectors: np.ndarray, lists: np.ndarray) -> None:
    """Add each vector to the list given for it. FAISS's fast-scan IVF takes vectors only
    through its quantizer (its add_core and add_sa_codes write unpacked codes into packed
    blocks: both crashed here), so each block of vectors is added through a quantizer that
    holds those same vectors under their lists' numbers, where each finds itself (at distance
    0). 1,024 a block: comparing them costs 3% of finding their lists among 32,768."""
    for start in range(0, len(ids), 1024):
        block = slice(start, start + 1024)
        itself = faiss.IndexIDMap(faiss.IndexFlatL2(ivf.d))
        itself.add_with_ids(vectors[block], lists[block])
        with _routed_by(ivf, itself):
            ivf.add_with_ids(vectors[block], ids[block])


@contextlib.contextmanager
def _routed_by(ivf: faiss.IndexIVF, quantizer: faiss.Index) -> Iterator[None]:
    """`ivf` assigning lists through `quantizer` for a while; its own is still owned by it."""
    own = ivf.quantizer
    ivf.quantizer = quantizer
    try:
        yield
    finally:
        ivf.quantizer = own


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """FAISS on this thread alone (OpenMP's thread count is per calling thread). A compressed
    index's probes are a short scan of codes, and a second thread woken for each query between
    the re-ranking's disk reads costs more than it shares: 1.4M vectors in 32,768 lists, p50
    5.6 ms on one thread against 15.6 on two (README, "Collections beyond RAM"). IVF-Flat's
    longer scans gain from two."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _owning(ivf: faiss.IndexIVF, quantizer: faiss.Index) -> faiss.IndexIVF:
    ivf.own_fields = True
    quantizer.this.disown()
    return ivf


def _doubled(ideal: int, lists: int) -> bool:
    return abs(math.log2(ideal / lists)) >= 1


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
