"""Synthetic embeddings with CLIP's real structure, for measuring ANN recall and latency.

Uniform random vectors flatter an ANN index: every query is equally far from everything. Real CLIP
embeddings are not like that. Images share a large common component and cluster by subject, and
a text query lies far from the image cloud (the modality gap: matching text-image cosines are
about 0.3, image-image cosines 0.5 to 0.9), so the query arrives from outside the data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


class ClipLike:
    def __init__(self, dim: int = 512, seed: int = 0) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.image_mean, self.text_mean = _unit(self.rng.standard_normal((2, dim)))

    def images(self, n: int, subjects: int | None = None) -> np.ndarray:
        """`n` image embeddings in `subjects` clusters (default: about 200 images per subject),
        with sub-clusters inside each subject, as photos of one event are."""
        return np.concatenate(list(self.image_chunks(n, subjects)))

    def image_chunks(
        self, n: int, subjects: int | None = None, size: int = 65536
    ) -> Iterator[np.ndarray]:
        """`images(n)`, `size` rows at a time: a collection bigger than memory."""
        subjects = subjects or max(8, n // 200)
        centres = _unit(self.rng.standard_normal((subjects, self.dim)))
        scenes = _unit(self.rng.standard_normal((subjects * 8, self.dim)))
        scene = self.rng.integers(0, subjects * 8, n)
        for start in range(0, n, size):
            s = scene[start : start + size]
            noise = _unit(self.rng.standard_normal((len(s), self.dim)))
            yield _unit(
                0.75 * self.image_mean + 0.45 * centres[s // 8] + 0.3 * scenes[s] + 0.35 * noise
            )

    def texts_for(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One caption-like query per image: mostly the text modality's own direction, plus the
        image's content (its part off the image mean) and noise of its own. `rng`: draw the
        noise from another generator, leaving the images that follow as they would be."""
        content = _unit(images - np.outer(images @ self.image_mean, self.image_mean))
        noise = _unit((rng or self.rng).standard_normal(images.shape))
        return _unit(0.8 * self.text_mean + 0.3 * content + 0.45 * noise)

    def prompts_for(self, images: np.ndarray) -> np.ndarray:
        """The texts a model would embed for the tag vocabulary: 320 text-like vectors of
        random images, from generators of their own."""
        rows = np.random.default_rng(7).choice(len(images), 320, replace=False)
        return self.texts_for(images[rows], np.random.default_rng(8))
