"""The FAISS index, keyed by catalog image id rather than by position, and chosen by size: exact
below `ANN_THRESHOLD` vectors, an inverted-file (IVF) index above it.

Why IVF-Flat and not HNSW: text queries sit far from the image cloud (CLIP's modality gap), and
graph indexes lose recall on such out-of-distribution queries (HNSW reached 0.91 recall@10 at
efSearch 256 on our CLIP-like benchmark). IVF stores the exact vectors, so its scores are exact
cosines, it adds and removes ids in place, a filter's ID selector works inside it, a larger
`nprobe` only ever widens the candidate set (pages stay consistent), and probing every list is an
exact search to fall back on. Its lists are trained on the *centred* vectors: the component all
photos share would otherwise dominate every centroid and route text queries badly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from search.storage import writing

if TYPE_CHECKING:
    from search.gpu import GpuFlat

log = logging.getLogger(__name__)

ANN_THRESHOLD = 25_000  # exact search is ~3 ms here on 2 CPU cores; it grows linearly above
TRAINING_PER_LIST = 40  # faiss warns below 39 training points per list
KMEANS_ITERATIONS = 10


def ideal_lists(n: int) -> int:
    """About 4·sqrt(n) lists (the usual rule, as autofaiss uses), a power of two."""
    return 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))


def default_probes(lists: int) -> int:
    return max(32, lists // 32)


class Allowed:
    """The ids a filter allows, with FAISS's selector over them built once: a filter that many
    queries repeat (a shop's category) is turned into a selector once per catalog generation."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.selector = faiss.IDSelectorBatch(self.ids)  # copies the ids; read-only in searches

    def __len__(self) -> int:
        return len(self.ids)


class VectorIndex:
    """Inner-product search over L2-normalised vectors: scores are cosine similarities."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.dim = index.d
        self._gpu: GpuFlat | None = None

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

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        return self.index if isinstance(self.index, faiss.IndexIVF) else None

    @property
    def kind(self) -> str:
        if ivf := self.ivf:
            return f"IVF{ivf.nlist},Flat (centred lists, nprobe {ivf.nprobe})"
        return "flat (exact inner product)"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def wants_rebuild(self) -> bool:
        """True when the collection has outgrown this index type or list count (or shrunk
        below it): flat past the threshold, IVF once the ideal list count doubled or halved."""
        n = len(self)
        ivf = self.ivf
        if ivf is None:
            return n >= ANN_THRESHOLD
        if n < ANN_THRESHOLD // 2:
            return True
        return abs(math.log2(ideal_lists(n) / ivf.nlist)) >= 1

    def rebuilt(self) -> VectorIndex:
        ids, vectors = self.contents()
        log.info("rebuilding the vector index for %d vectors", len(ids))
        return VectorIndex.build(self.dim, ids, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim),
                np.asarray(ids, dtype=np.int64),
            )
            self._gpu = None

    def remove(self, ids: Iterable[int]) -> None:
        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            self._gpu = None

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
        ivf = self.ivf
        if ivf is None:
            params = None if sel is None else faiss.SearchParameters(sel=sel)
            return _found(*self.index.search(query, k, params=params))
        # Probe enough lists to expect ample candidates of the allowed ones: a function of the
        # filter and of offset + k, so a deeper page only ever widens the candidate set.
        share = n / len(self)
        probes = max(ivf.nprobe / share, 4 * k * ivf.nlist / n)
        probes = min(ivf.nlist, math.ceil(probes))
        scores, ids = _found(
            *ivf.search(query, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=probes))
        )
        if len(ids) < k and probes < ivf.nlist:
            scores, ids = _found(
                *ivf.search(query, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nlist))
            )
        return scores, ids

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) held, in no particular order."""
        ivf = self.ivf
        if ivf is None:
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            return ids, self.index.index.reconstruct_n(0, len(ids))
        lists = ivf.invlists
        id_parts, vector_parts = [], []
        for number in range(ivf.nlist):
            size = lists.list_size(number)
            if size:
                id_parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
                codes = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size)
                vector_parts.append(codes.copy().view(np.float32).reshape(size, self.dim))
        if not id_parts:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(id_parts), np.concatenate(vector_parts)

    def ids(self) -> np.ndarray:
        if self.ivf is None:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self.contents()[0]

    def use_gpu(self) -> bool:
        """Answer unfiltered queries with an exact search on the GPU when there is one and the
        vectors fit (search/gpu.py). Filtered queries stay on the CPU index, whose ID selectors
        apply the filter inside the search."""
        from search.gpu import gpu_flat

        self._gpu = gpu_flat(*self.contents())
        return self._gpu is not None

    def save(self, path: Path) -> None:
        """Write atomically: readers see the old file or the new one, never a partial one."""
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
    def load(cls, path: Path) -> VectorIndex:
        # read_index returns the concrete index and owns it; wrapping it again with
        # downcast_index would leave a pointer that dies with this temporary.
        return cls(faiss.read_index(str(path)))


def _found(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]


def _train_ivf(vectors: np.ndarray, lists: int) -> faiss.IndexIVFFlat:
    """An IVF whose coarse quantizer centres every vector (and query) on the collection's mean
    before routing it, while the lists store and score the original vectors."""
    dim = vectors.shape[1]
    rng = np.random.default_rng(0)
    sample_size = min(len(vectors), TRAINING_PER_LIST * lists)
    sample = np.ascontiguousarray(
        vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))], dtype=np.float32
    )
    centring = faiss.CenteringTransform(dim)
    centring.train(sample)
    kmeans = faiss.Kmeans(dim, lists, niter=KMEANS_ITERATIONS, spherical=True, seed=1)
    kmeans.train(centring.apply(sample))
    centroids = faiss.IndexFlatIP(dim)
    centroids.add(kmeans.centroids)
    quantizer = faiss.IndexPreTransform(centring, centroids)
    ivf = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    # Hand ownership of the parts to the C++ objects that hold them.
    quantizer.own_fields = True
    centring.this.disown()
    centroids.this.disown()
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.is_trained = True
    ivf.nprobe = default_probes(lists)
    return ivf


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
