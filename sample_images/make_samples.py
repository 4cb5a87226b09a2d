"""Draw the sample images with Pillow: python sample_images/make_samples.py

The pictures are this project's own work, released with it under its licence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 320
HERE = Path(__file__).parent


def gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        draw.line(
            [(0, y), (SIZE, y)],
            fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    return image


def sunset_over_sea() -> Image.Image:
    image = gradient((255, 120, 40), (120, 30, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((110, 120, 210, 220), fill=(255, 220, 80))
    draw.rectangle((0, 190, SIZE, SIZE), fill=(20, 50, 110))
    for y in range(200, SIZE, 14):
        draw.line([(40, y), (280, y)], fill=(255, 170, 90), width=2)
    return image


def red_apple() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (245, 240, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((70, 90, 250, 270), fill=(200, 20, 30))
    draw.rectangle((155, 55, 165, 100), fill=(90, 50, 20))
    draw.ellipse((165, 50, 225, 85), fill=(40, 150, 40))
    return image


def cloudy_sky() -> Image.Image:
    image = gradient((70, 140, 230), (190, 220, 255))
    draw = ImageDraw.Draw(image)
    for cx, cy in ((80, 90), (220, 150), (130, 230)):
        for dx in (-40, 0, 40):
            draw.ellipse((cx + dx - 35, cy - 25, cx + dx + 35, cy + 25), fill=(255, 255, 255))
    return image


def pine_forest() -> Image.Image:
    image = gradient((150, 200, 240), (210, 230, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 250, SIZE, SIZE), fill=(60, 110, 40))
    for x in range(10, SIZE, 50):
        draw.polygon([(x, 260), (x + 45, 260), (x + 22, 120 + (x % 3) * 20)], fill=(20, 90, 40))
        draw.rectangle((x + 18, 260, x + 26, 285), fill=(90, 60, 30))
    return image


def night_sky() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (10, 15, 45))
    draw = ImageDraw.Draw(image)
    rng = random.Random(7)
    for _ in range(90):
        x, y = rng.randrange(SIZE), rng.randrange(SIZE)
        draw.point((x, y), fill=(255, 255, 230))
    draw.ellipse((200, 40, 270, 110), fill=(250, 245, 200))
    draw.ellipse((220, 35, 285, 100), fill=(10, 15, 45))
    return image


def checkerboard() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = SIZE // 8
    for i in range(8):
        for j in range(8):
            if (i + j) % 2:
                draw.rectangle((i * cell, j * cell, (i + 1) * cell, (j + 1) * cell), fill=(0, 0, 0))
    return image


def yellow_flower() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (120, 190, 90))
    draw = ImageDraw.Draw(image)
    cx, cy = 160, 150
    for k in range(10):
        angle = 2 * math.pi * k / 10
        x, y = cx + 70 * math.cos(angle), cy + 70 * math.sin(angle)
        draw.ellipse((x - 32, y - 32, x + 32, y + 32), fill=(255, 215, 0))
    draw.ellipse((cx - 35, cy - 35, cx + 35, cy + 35), fill=(120, 70, 20))
    draw.rectangle((155, 220, 165, SIZE), fill=(40, 120, 40))
    return image


def snowman() -> Image.Image:
    image = gradient((180, 200, 230), (240, 245, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 260, SIZE, SIZE), fill=(250, 250, 255))
    for box in ((100, 170, 220, 290), (120, 100, 200, 180), (135, 50, 185, 105)):
        draw.ellipse(box, fill=(255, 255, 255), outline=(160, 170, 190), width=2)
    draw.polygon([(160, 78), (160, 86), (190, 82)], fill=(255, 130, 0))
    return image


def red_house() -> Image.Image:
    image = gradient((120, 180, 240), (200, 230, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 250, SIZE, SIZE), fill=(90, 170, 70))
    draw.rectangle((80, 150, 240, 260), fill=(190, 40, 40))
    draw.polygon([(60, 150), (260, 150), (160, 70)], fill=(90, 50, 40))
    draw.rectangle((145, 200, 175, 260), fill=(80, 50, 30))
    draw.rectangle((100, 175, 130, 205), fill=(200, 230, 255))
    return image


def rainbow() -> Image.Image:
    image = gradient((110, 170, 230), (220, 235, 250))
    draw = ImageDraw.Draw(image)
    colours = [(255, 0, 0), (255, 140, 0), (255, 235, 0), (0, 180, 0), (0, 90, 255), (90, 0, 170)]
    for i, colour in enumerate(colours):
        r = 150 - i * 12
        draw.arc((160 - r, 260 - r, 160 + r, 260 + r), 180, 360, fill=colour, width=12)
    return image


def city_skyline() -> Image.Image:
    image = gradient((30, 30, 80), (200, 100, 80))
    draw = ImageDraw.Draw(image)
    rng = random.Random(3)
    x = 0
    while x < SIZE:
        width, height = rng.randrange(25, 55), rng.randrange(90, 230)
        draw.rectangle((x, SIZE - height, x + width, SIZE), fill=(25, 25, 35))
        for wy in range(SIZE - height + 8, SIZE - 8, 16):
            for wx in range(x + 5, x + width - 5, 10):
                if rng.random() < 0.5:
                    draw.rectangle((wx, wy, wx + 4, wy + 6), fill=(255, 220, 120))
        x += width + 3
    return image


def sailing_boat() -> Image.Image:
    image = gradient((140, 200, 250), (200, 230, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 210, SIZE, SIZE), fill=(30, 100, 170))
    draw.polygon([(90, 210), (230, 210), (205, 240), (115, 240)], fill=(120, 60, 30))
    draw.line([(160, 80), (160, 210)], fill=(60, 40, 20), width=4)
    draw.polygon([(164, 85), (164, 200), (230, 200)], fill=(255, 255, 255))
    draw.polygon([(156, 100), (156, 200), (105, 200)], fill=(240, 240, 230))
    return image


SCENES: dict[str, Callable[[], Image.Image]] = {
    "sunset-over-sea.jpg": sunset_over_sea,
    "red-apple.jpg": red_apple,
    "cloudy-sky.jpg": cloudy_sky,
    "pine-forest.jpg": pine_forest,
    "night-sky-moon.png": night_sky,
    "checkerboard.png": checkerboard,
    "yellow-flower.jpg": yellow_flower,
    "snowman.png": snowman,
    "red-house.jpg": red_house,
    "rainbow.png": rainbow,
    "city-skyline-night.jpg": city_skyline,
    "sailing-boat.jpg": sailing_boat,
}


def main() -> None:
    for name, draw in SCENES.items():
        image = draw()
        options = {"quality": 88} if name.endswith(".jpg") else {"optimize": True}
        image.save(HERE / name, **options)


if __name__ == "__main__":
    main()
