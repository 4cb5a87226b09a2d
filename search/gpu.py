"""Exact search on a GPU for collections that fit in its memory: brute force there beats any CPU
index and is exact. faiss-gpu is used where its CUDA runtime loads; otherwise (a wheel built for
CUDA 12 on a machine with CUDA 13) a torch matrix product and top-k, in float32 like the CPU flat
index, so both return the same ranking."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import faiss
import numpy as np

log = logging.getLogger(__name__)

FAISS_MAX_K = 2048  # faiss's limit for k on a GPU; deeper pages are answered on the CPU
MEMORY_SHARE = 0.5  # of the GPU's free memory, at most, for the vectors: the model needs room


class GpuFlat(Protocol):
    max_k: int

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one (1, dim) float32 query."""
        ...


def gpu_flat(ids: np.ndarray, vectors: np.ndarray) -> GpuFlat | None:
    """The vectors on the GPU, or None when there is none or they do not fit."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        return FaissFlat(ids, vectors)
    import torch  # only reached when the model is on CUDA, so torch is already loaded

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    if vectors.nbytes > MEMORY_SHARE * free:
        log.info(
            "%d vectors (%.1f GB) do not fit beside the model on the GPU; searching on the CPU",
            len(ids),
            vectors.nbytes / 1e9,
        )
        return None
    return TorchFlat(ids, vectors)


class FaissFlat:
    max_k = FAISS_MAX_K

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.resources = faiss.StandardGpuResources()  # must live as long as the index
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = False
        self.index = faiss.GpuIndexFlatIP(self.resources, vectors.shape[1], config)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ids = ids
        self.lock = threading.Lock()  # faiss's GPU resources are not thread-safe

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            scores, positions = self.index.search(query, k)
        keep = positions[0] >= 0
        return scores[0][keep], self.ids[positions[0][keep]]


class TorchFlat:
    max_k = 1 << 31

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import torch

        self.matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).cuda()
        self.ids = ids

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            vector = torch.from_numpy(query[0]).cuda()
            # Full float32 (no TF32): the same products the CPU index computes.
            scores = torch.mv(self.matrix, vector)
            top = torch.topk(scores, min(k, len(self.ids)))
            values, positions = top.values.cpu().numpy(), top.indices.cpu().numpy()
        return values, self.ids[positions]
