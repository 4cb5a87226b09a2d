"""Write N distinct small JPEG photos-to-be (coloured shapes on a background, in 100-image
folders) for benchmarks that need a collection of a given size, such as load.py's 10,000.

    python benchmarks/make_images.py --count 10000 --out /tmp/ten-thousand
    python benchmarks/make_images.py --count 20000 --out /tmp/s224 --size 224x224
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw


def draw(rng: random.Random, width: int = 320, height: int = 240, shapes: int = 6) -> Image.Image:
    """One picture: random ellipses and rectangles on a random background."""
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    for _ in range(shapes):
        x, y = rng.randrange(width - 16), rng.randrange(height - 16)
        box = (x, y, x + rng.randrange(8, width // 2), y + rng.randrange(8, height // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=fill)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT in pixels")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    rng = random.Random(0)
    for number in range(args.count):
        folder = args.out / f"{number // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        draw(rng, width, height).save(folder / f"{number:06d}.jpg", quality=88)
    print(f"wrote {args.count} images under {args.out}")


if __name__ == "__main__":
    main()
