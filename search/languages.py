"""The language of a query, for tokenizers that mark each text with one (NLLB's).

NLLB-CLIP's text tower reads a language code before the text (`zho_Hans 海边的日落`); its
tokenizer writes `eng_Latn` unless told otherwise, which costs Chinese queries much of their
published recall. The code is taken from the script a query is written in: no dependency, no
model, and right for the scripts that name one language. Latin-script queries stay `eng_Latn`:
the script cannot tell French from English (not measured here: there are no real weights).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# (first, last code point, NLLB code), searched in order: kana before Han, since Japanese is
# written with both.
SCRIPTS = (
    (0x3040, 0x30FF, "jpn_Jpan"),
    (0xAC00, 0xD7AF, "kor_Hang"),
    (0x1100, 0x11FF, "kor_Hang"),
    (0x4E00, 0x9FFF, "zho_Hans"),
    (0x3400, 0x4DBF, "zho_Hans"),
    (0x0400, 0x04FF, "rus_Cyrl"),
    (0x0600, 0x06FF, "arb_Arab"),
    (0x0900, 0x097F, "hin_Deva"),
    (0x0E00, 0x0E7F, "tha_Thai"),
    (0x0370, 0x03FF, "ell_Grek"),
    (0x0590, 0x05FF, "heb_Hebr"),
)
LATIN = "eng_Latn"

# What a page of results tells its reader beside them, by code (web/messages.py translates).
NOTICES = {
    "english_only": "this collection's model reads English only: queries in Chinese and other "
    "non-Latin scripts find little; index with a multilingual model (xlm-roberta-base-ViT-B-32) "
    "to search in them",
}


def language_code(text: str) -> str:
    points = {ord(char) for char in text}
    for first, last, code in SCRIPTS:
        if any(first <= point <= last for point in points):
            return code
    return LATIN


def notice(texts: Iterable[str], multilingual: bool) -> str | None:
    """What to tell the reader of the results for `texts`: "english_only" where one is written in
    a script other than Latin and the model read only English captions (ViT-B-32 finds the right
    image for 0.7% of Chinese captions)."""
    if multilingual or all(language_code(text) == LATIN for text in texts):
        return None
    return "english_only"


def by_language(tokenizer: Any) -> Any:
    """open_clip's tokenizer, made to mark each text with its own language when it wraps a
    Hugging Face one that has a source language; any other as it is."""
    if hasattr(getattr(tokenizer, "tokenizer", None), "src_lang"):
        return LanguageTokenizer(tokenizer)
    return tokenizer


class LanguageTokenizer:
    """open_clip's tokenizer, each text marked with its own language: texts are tokenized in
    groups of one language, under a lock, since the language is the tokenizer's state."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        import torch  # here: the API document reads NOTICES above and needs no torch

        groups: dict[str, list[int]] = defaultdict(list)
        for row, text in enumerate(texts):
            groups[language_code(text)].append(row)
        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        with self.lock:
            for code, members in groups.items():
                self.tokenizer.tokenizer.src_lang = code  # its setter re-marks what follows
                tokens = self.tokenizer([texts[i] for i in members])
                for row, row_tokens in zip(members, tokens, strict=True):
                    rows[row] = row_tokens
        return torch.stack(rows)
