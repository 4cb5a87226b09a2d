"""Raw image-encoder throughput of clipsearch's Encoder, per batch size, against an fp32 baseline.

    python benchmarks/encode_throughput.py --model ViT-B-32 --device cuda --batch-sizes 64,256

On CUDA the Encoder runs fp16; the same run times an fp32 copy of the model as the baseline. On the
CPU both are fp32 and the baseline row is omitted. Random weights cost what real ones cost.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from search.model import Encoder
from search.spec import ModelSpec


def images_per_second(
    encode: callable, batch: torch.Tensor, seconds: float, sync: callable
) -> float:
    encode(batch)  # warm-up: kernel selection, allocator
    encode(batch)
    sync()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(batch)
        done += len(batch)
    sync()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    encoder = Encoder(ModelSpec.from_args(args.model, "none"), args.device)
    cuda = encoder.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    size = encoder.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    baseline = None
    if cuda:
        baseline = Encoder(ModelSpec.from_args(args.model, "none"), "cuda")
        baseline.model.float()
        baseline.dtype = torch.float32
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        # What decode workers hand over: uint8 pixels at the model's input size.
        pixels = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
        if cuda:
            pixels = pixels.pin_memory()
        row = {
            "model": args.model,
            "device": str(encoder.device),
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "batch_size": batch_size,
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "images_per_second": round(
                images_per_second(encoder.encode_pixels, pixels, args.seconds, sync), 1
            ),
        }
        if baseline is not None:
            fp32 = images_per_second(baseline.encode_pixels, pixels, args.seconds, sync)
            row["fp32_images_per_second"] = round(fp32, 1)
            row["speedup"] = round(row["images_per_second"] / fp32, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
