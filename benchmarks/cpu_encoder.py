"""What the CPU offers the encoder, tried one by one against the fp32 model as open_clip builds it:
time per image (batch 32) and per text query (batch 1 and 8), and the worst cosine with the fp32
reference embedding. Only what is faster and keeps cosine >= 0.999 is worth using.

    python benchmarks/cpu_encoder.py                 # ViT-B-32, random weights
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from search import text
from search.model import Encoder
from search.spec import ModelSpec

VARIANTS = [
    "fp32",
    "fp32, text packed (oneDNN)",
    "1 thread",
    "bf16 autocast (AMX)",
    "bf16 weights",
    "bf16 weights, text packed (oneDNN)",
    "channels-last",
]
TEXTS = ["a dog running on grass", "two people at a market in the rain", "snow", "red car"]


def per_call_ms(call: Callable[[], object], seconds: float = 3.0) -> float:
    call()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return (time.perf_counter() - started) / calls * 1000


@contextlib.contextmanager
def variant(name: str, encoder: Encoder) -> Iterator[Encoder]:
    """The encoder as variant `name` runs it."""
    if name == "fp32":
        yield encoder
    elif name == "bf16 autocast (AMX)":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield encoder
    elif name.startswith(("fp32, ", "bf16 weights")):
        yield _converted(
            encoder, torch.float32 if name.startswith("fp32") else torch.bfloat16, "packed" in name
        )
    elif name == "1 thread":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield encoder
        finally:
            torch.set_num_threads(threads)
    elif name == "channels-last":
        other = copy.copy(encoder)
        other.model = copy.deepcopy(encoder.model).to(memory_format=torch.channels_last)
        yield other
    else:
        raise ValueError(name)


def _converted(encoder: Encoder, dtype: torch.dtype, packed: bool) -> Encoder:
    other = copy.copy(encoder)
    other.model = copy.deepcopy(encoder.model).to(dtype)
    other.dtype = dtype
    if packed:
        text.prepack(other.model)
    return other


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.min(np.sum(a * b, axis=1))), 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    encoder = Encoder(ModelSpec.from_args(args.model, "none"), "cpu", exact=True)
    size = encoder.layout.size
    pixels = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    texts = [f"{TEXTS[i % 4]} {i}" for i in range(8)]
    reference = encoder.encode_pixels(pixels), encoder.encode_texts(texts)
    per_call_ms(lambda: encoder.encode_pixels(pixels), args.seconds)  # oneDNN's first-use setup
    rows = []
    for name in VARIANTS:
        with variant(name, encoder) as run:
            images, queries = run.encode_pixels(pixels), run.encode_texts(texts)
            seconds = args.seconds
            rows.append(
                {
                    "variant": name,
                    "image_ms": round(
                        per_call_ms(lambda r=run: r.encode_pixels(pixels), seconds) / 32, 2
                    ),
                    "text_1_ms": round(
                        per_call_ms(lambda r=run: r.encode_texts(texts[:1]), seconds), 2
                    ),
                    "text_8_ms": round(
                        per_call_ms(lambda r=run: r.encode_texts(texts), seconds), 2
                    ),
                    "image_cosine": worst_cosine(images, reference[0]),
                    "text_cosine": worst_cosine(queries, reference[1]),
                }
            )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "variants": rows}))


if __name__ == "__main__":
    main()
