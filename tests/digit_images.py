"""Digit images that are not MNIST's: rendered with the typefaces matplotlib ships (DejaVu Sans,
Serif and Mono, regular, bold and slanted), distorted (size, rotation, shear, stroke, position),
dark ink on light paper with noise, as a scan would be: 64x64 PNGs by default. Deterministic for
a seed; the tests and bench/data.py make their ingest folders with it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")


def _font(face: str, size: int, cache: dict = {}) -> ImageFont.FreeTypeFont:  # noqa: B006 (a cache on purpose)
    if (face, size) not in cache:
        import matplotlib

        cache[face, size] = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / face), size)
    return cache[face, size]


def render_digit(digit: int, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """One digit, dark on light, in a `side` x `side` greyscale image."""
    big = side * 2  # drawn large, then distorted and shrunk: smooth edges
    canvas = Image.new("L", (big, big), 0)
    font = _font(FACES[rng.integers(len(FACES))], int(rng.integers(int(big * 0.55), int(big * 0.8))))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font, stroke_width=int(rng.integers(0, 4)))
    x = (big - (right - left)) / 2 - left + rng.normal(0, big * 0.04)
    y = (big - (bottom - top)) / 2 - top + rng.normal(0, big * 0.04)
    draw.text((x, y), str(digit), fill=255, font=font, stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
    shear = rng.uniform(-0.25, 0.25)
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * big / 2, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-15, 15), Image.BILINEAR)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    ink = np.asarray(canvas.resize((side, side), Image.LANCZOS), np.float32) / 255
    paper, pen = rng.uniform(190, 250), rng.uniform(0, 70)
    pixels = paper - ink * (paper - pen) + rng.normal(0, rng.uniform(1, 8), ink.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def write_folder(root: Path, per_digit: int, seed: int = 0, side: int = 64) -> Path:
    """root/0/ ... root/9/, `per_digit` PNGs in each."""
    rng = np.random.default_rng(seed)
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_digit):
            (folder / f"{seed}-{i:05d}.png").write_bytes(png(render_digit(digit, rng, side)))
    return root
