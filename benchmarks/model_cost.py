"""What a multilingual model costs against ViT-B-32 on this machine, in the same run: text query
encoding (one Chinese query, one English, a batch of eight) and, with --images, indexing.

    python benchmarks/stand_in_text_model.py /tmp/xlmr-b32/text     # no network: a stand-in
    python benchmarks/model_cost.py --text-model /tmp/xlmr-b32/text --images DIR

Both models have random weights (`--pretrained none`), which cost what real ones cost; the
stand-in tokenizer cuts Chinese into about as many pieces as XLM-R's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import THIS_TREE, run_json
from search.model import Encoder
from search.spec import ModelSpec

QUERIES = {"chinese": "海边的日落", "english": "a dog running on the beach at sunset"}
BATCH = ["一只猫坐在草地上", "红色的苹果", "雪人", "城市夜景", "a red car", "two men", "snow", "猫"]
MULTILINGUAL = "xlm-roberta-base-ViT-B-32"


def p50_ms(encode: callable, rounds: int = 30) -> float:
    encode()  # warm-up
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        encode()
        samples.append(time.perf_counter() - started)
    return round(float(np.percentile(samples, 50)) * 1000, 2)


def text_costs(encoder: Encoder) -> dict[str, float]:
    costs = {
        f"{name}_query_ms": p50_ms(lambda text=text: encoder.encode_texts([text]))
        for name, text in QUERIES.items()
    }
    costs["batch_of_8_ms"] = p50_ms(lambda: encoder.encode_texts(BATCH))
    return costs


def indexing(images: Path, model_args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as data:
        command = ["-m", "clipsearch", "index", str(images), "--data-dir", data, "--json"]
        return run_json(THIS_TREE, *command, *model_args)["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-model", required=True, help="xlm-roberta-base's folder")
    parser.add_argument("--images", type=Path, help="also index this folder with each model")
    args = parser.parse_args()
    result = {}
    for name, text_model in (("ViT-B-32", None), (MULTILINGUAL, args.text_model)):
        result[name] = text_costs(Encoder(ModelSpec.from_args(name, "none", text_model)))
        if args.images:
            model_args = ["--model", name, "--pretrained", "none"]
            model_args += ["--text-model", text_model] if text_model else []
            result[name]["index_images_per_second"] = indexing(args.images, model_args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
