"""Zero-shot tags: each image scored by the collection's own model against a vocabulary of
words, keeping those it clears a calibrated margin for. Tags come from the stored vectors and the
vocabulary's text embeddings alone, so a new vocabulary retags a collection without reading
one image.

The margin. A raw cosine threshold does not carry from one model to another (their cosines of a
matching pair differ in range), and a softmax over the vocabulary makes one image's tags compete,
so a dog on a beach would keep only the stronger of the two. Each tag is judged on its own
against a neutral prompt instead: the model's probability that "a photo of beach." describes the
image better than "a photo." does, sigmoid(scale * (cos(tag) - cos(neutral))). The neutral prompt
takes out what every prompt shares with any photo; `scale` is the temperature the model learned
with its contrastive loss, the one its cosines were calibrated to (100 for CLIP, where the
margin of 0.9 is a cosine 0.022 above the neutral prompt). Random weights learned nothing and
their scale of 14 keeps nearly every tag out, as it should.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.errors import ClipsearchError
from search.storage import read_small_text

if TYPE_CHECKING:
    from search.model import Encoder

TAG_PROMPT = "a photo of {}."
NEUTRAL_PROMPT = "a photo."
MIN_TAG_PROBABILITY = 0.9
MAX_TAGS_PER_IMAGE = 8  # the most probable; a vocabulary of synonyms cannot flood an image
MAX_VOCABULARY = 10_000  # tags; embedding them takes about a minute on a laptop's CPU
MAX_TAG_CHARS = 100
MAX_VOCABULARY_BYTES = 1 << 20
DEFAULT_VOCABULARY = Path(__file__).with_name("data") / "tags.txt"
_TEXT_BATCH = 256


@dataclass(frozen=True)
class Vocabulary:
    """The tags in force, in their file's order: one per line, `#` comments, no duplicates."""

    names: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        try:
            text = read_small_text(path, MAX_VOCABULARY_BYTES)
        except (OSError, UnicodeDecodeError) as exc:
            raise ClipsearchError(f"cannot read {path}: {getattr(exc, 'strerror', exc)}") from None
        return cls.parse(text, str(path))

    @classmethod
    def default(cls) -> Vocabulary:
        return cls.read(DEFAULT_VOCABULARY)

    @classmethod
    def parse(cls, text: str, origin: str) -> Vocabulary:
        names: dict[str, str] = {}  # case-folded -> as written, the first spelling kept
        for number, line in enumerate(text.splitlines(), 1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if problem := _problem(name):
                raise ClipsearchError(f"{origin}, line {number}: {problem}")
            names.setdefault(name.casefold(), name)
        if len(names) > MAX_VOCABULARY:
            raise ClipsearchError(f"{origin}: more than {MAX_VOCABULARY:,} tags")
        return cls(tuple(names.values()))

    @property
    def digest(self) -> str:
        """Of the prompts as the model reads them: a new template is a new vocabulary."""
        prompts = [NEUTRAL_PROMPT, TAG_PROMPT, *self.names]
        return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()


def _problem(name: str) -> str | None:
    if len(name) > MAX_TAG_CHARS:
        return f"a tag has at most {MAX_TAG_CHARS} characters"
    if "," in name:
        return "a tag cannot hold a comma: a filter lists several tags with commas"
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
        return "a tag cannot hold control characters"
    return None


@dataclass(frozen=True)
class Prompts:
    """A vocabulary embedded by one model: all that tagging needs, with no model loaded."""

    tags: np.ndarray  # (tags, dim), L2-normalised
    neutral: np.ndarray  # (dim,)
    scale: float

    @classmethod
    def embed(cls, encoder: Encoder, vocabulary: Vocabulary) -> Prompts:
        texts = [NEUTRAL_PROMPT, *(TAG_PROMPT.format(name) for name in vocabulary.names)]
        parts = [
            encoder.encode_texts(texts[start : start + _TEXT_BATCH])
            for start in range(0, len(texts), _TEXT_BATCH)
        ]
        vectors = np.concatenate(parts)
        return cls(vectors[1:], vectors[0], encoder.logit_scale)

    def packed(self) -> bytes:
        """The neutral prompt's vector, then the tags', as float32 rows."""
        return np.vstack([self.neutral, self.tags]).astype(np.float32).tobytes()

    @classmethod
    def unpacked(cls, data: bytes, dim: int, scale: float) -> Prompts:
        vectors = np.frombuffer(data, dtype=np.float32).reshape(-1, dim)
        return cls(vectors[1:], vectors[0], scale)

    def tag(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vectors' tags as three flat arrays: the vector's row, the tag's index in the
        vocabulary, its probability. A vector's tags are those at MIN_TAG_PROBABILITY or more,
        at most MAX_TAGS_PER_IMAGE, most probable first; rows come in order."""
        margins = vectors @ self.tags.T - (vectors @ self.neutral)[:, None]
        # float64: at a scale of 100 a far-off tag's exp(-logit) overflows float32.
        probabilities = 1 / (1 + np.exp(-self.scale * margins.astype(np.float64)))
        rows, tags = np.nonzero(probabilities >= MIN_TAG_PROBABILITY)
        chosen = probabilities[rows, tags]
        order = np.lexsort((tags, -chosen, rows))  # by row, then probability, then index
        rows, tags, chosen = rows[order], tags[order], chosen[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place in its row's list
        kept = rank < MAX_TAGS_PER_IMAGE
        return rows[kept], tags[kept], chosen[kept]
