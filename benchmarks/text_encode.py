"""Text encoding, open_clip's padded forward (all 77 positions) against clipsearch's forward cut
to the batch's longest query, in one run on the same model and the same texts.

    python benchmarks/text_encode.py --model ViT-B-32 --batch-sizes 1,8,32

Prints one JSON line per batch size: ms per batch each way, the speed-up, and how far apart the
two embeddings are (max abs difference, min cosine). The texts are shop and photo queries of
2 to 12 words, as users type them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from search import text
from search.model import Encoder
from search.spec import ModelSpec

QUERIES = [
    "red dress",
    "a dog on a beach at sunset",
    "two people hiking in snow",
    "wooden kitchen table with four chairs",
    "black leather boots",
    "a child playing with a ball in a park on a sunny afternoon",
    "city skyline at night",
    "white sneakers",
]


def per_batch_ms(encode: object, tokens: torch.Tensor, seconds: float) -> float:
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(tokens)  # type: ignore[operator]
        runs += 1
    return (time.perf_counter() - started) * 1000 / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    encoder = Encoder(ModelSpec.from_args(args.model, "none"), args.device)
    model = encoder.model
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        texts = [QUERIES[i % len(QUERIES)] for i in range(size)]
        tokens = encoder.tokenizer(texts).to(encoder.device)
        with torch.inference_mode():
            padded = model.encode_text(tokens).float()
            cut = text.encode_text(model, tokens).float()
            before = per_batch_ms(model.encode_text, tokens, args.seconds)
            after = per_batch_ms(lambda t: text.encode_text(model, t), tokens, args.seconds)
        cosine = torch.nn.functional.cosine_similarity(padded, cut).min()
        row = {
            "model": args.model,
            "batch_size": size,
            "padded_ms": round(before, 2),
            "cut_ms": round(after, 2),
            "speedup": round(before / after, 2),
            "max_abs_difference": float((padded - cut).abs().max()),
            "min_cosine": round(float(cosine), 7),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
