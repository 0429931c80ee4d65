"""Built-in generated classification sets, offline and deterministic, distinct in kind from the digits:

- ``shapes``: one filled geometric shape per image (``circle``, ``square``, ``triangle``, ``diamond``,
  ``cross``, ``ring``) in a random colour, size and position, on a noisy grey background;
- ``textures``: a periodic or random pattern filling the image (``horizontal``, ``vertical`` and
  ``diagonal`` stripes, ``checkerboard``, ``dots``, ``blobs``: smoothed noise) at a random frequency and phase,
  in two random colours, with pixel noise.

Each set has ``SYNTHETIC_PER_CLASS`` images per class, drawn at ``BASE_SIZE`` px and resized to the requested
image size (as the 8x8 digits are), with the fixed stratified 60/20/20 split of the digits. An image is a pure
function of the set's name, its index and :data:`SYNTHETIC_VERSION`, so every run sees the same pixels and the
feature cache recognises them.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_VERSION = 1
BASE_SIZE = 32
SYNTHETIC_PER_CLASS = 200
SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "cross", "ring")
TEXTURE_CLASSES = ("horizontal", "vertical", "diagonal", "checkerboard", "dots", "blobs")


def _rng(kind: str, index: int) -> np.random.Generator:
    seed = int.from_bytes(
        hashlib.blake2b(f"{kind}:{SYNTHETIC_VERSION}:{index}".encode(), digest_size=8).digest()
    )
    return np.random.default_rng(seed)


def _colour(rng: np.random.Generator, avoid: float) -> tuple[int, int, int]:
    """A saturated colour whose mean differs from the grey level ``avoid`` by at least 50."""
    while True:
        c = rng.integers(0, 256, 3)
        if abs(float(c.mean()) - avoid) >= 50 or float(c.max() - c.min()) >= 120:
            return (int(c[0]), int(c[1]), int(c[2]))


def draw_shape(label: int, rng: np.random.Generator, size: int = BASE_SIZE) -> np.ndarray:
    """One ``shapes`` image ``(size, size, 3)`` uint8 of class ``SHAPE_CLASSES[label]``."""
    level = float(rng.integers(70, 190))
    pixels = np.clip(rng.normal(level, 10.0, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    s = int(rng.integers(int(0.45 * size), int(0.85 * size) + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, 2))
    x1, y1 = x0 + s - 1, y0 + s - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fill = _colour(rng, level)
    shape = SHAPE_CLASSES[label]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        w = max(2, s // 4)
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=fill)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)
    else:  # ring
        w = max(2, s // 5)
        draw.ellipse((x0, y0, x1, y1), outline=fill, width=w)
    return np.asarray(image)


def draw_texture(label: int, rng: np.random.Generator, size: int = BASE_SIZE) -> np.ndarray:
    """One ``textures`` image ``(size, size, 3)`` uint8 of class ``TEXTURE_CLASSES[label]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cycles = float(rng.uniform(2.5, 6.0))
    phase = float(rng.uniform(0, 2 * np.pi))
    kind = TEXTURE_CLASSES[label]
    if kind == "horizontal":
        pattern = np.sin(2 * np.pi * cycles * yy + phase)
    elif kind == "vertical":
        pattern = np.sin(2 * np.pi * cycles * xx + phase)
    elif kind == "diagonal":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        pattern = np.sin(2 * np.pi * cycles * (xx + sign * yy) / np.sqrt(2) + phase)
    elif kind == "checkerboard":
        pattern = np.sign(np.sin(2 * np.pi * cycles * xx + phase) * np.sin(2 * np.pi * cycles * yy + phase))
    elif kind == "dots":
        d = np.sin(np.pi * cycles * xx + phase) ** 2 * np.sin(np.pi * cycles * yy + phase) ** 2
        pattern = 2.0 * (d > 0.5) - 1.0
    else:  # blobs: low-pass filtered noise, no period
        coarse = rng.normal(0, 1, (4, 4))
        img = Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8))
        smooth = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        pattern = smooth / 127.5 - 1.0
    weight = (np.clip(pattern, -1, 1) + 1) / 2  # (size, size) in [0, 1]
    a = np.array(_colour(rng, 128.0), dtype=np.float64)
    b = np.array(_colour(rng, float(a.mean())), dtype=np.float64)
    pixels = weight[..., None] * a + (1 - weight[..., None]) * b + rng.normal(0, 12.0, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


GENERATORS = {"shapes": (SHAPE_CLASSES, draw_shape), "textures": (TEXTURE_CLASSES, draw_texture)}


def synthetic_images(kind: str, image_size: int) -> tuple[np.ndarray, list[int], list[str]]:
    """The whole ``kind`` set: images ``(N, image_size, image_size, 3)`` uint8, labels and class names."""
    classes, draw = GENERATORS[kind]
    labels = [c for c in range(len(classes)) for _ in range(SYNTHETIC_PER_CLASS)]
    images = []
    for i, c in enumerate(labels):
        base = Image.fromarray(draw(c, _rng(kind, i)))
        if image_size != BASE_SIZE:
            base = base.resize((image_size, image_size), Image.Resampling.BILINEAR)
        images.append(np.asarray(base))
    return np.stack(images), labels, list(classes)
