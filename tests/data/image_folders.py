"""Small ImageFolder trees of random images for the data tests (imported by test modules of this folder)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "fox")


def write_image(path: Path, size: int = 16, mode: str = "RGB") -> None:
    """A ``size`` x ``size`` random image at ``path`` in ``mode``; the content is a function of the path."""
    rng = np.random.default_rng(zlib.crc32(os.fsencode(path)))  # distinct content per path
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_folder(root: Path, splits=("train", "val", "test"), classes=CLASSES, n: int = 4) -> Path:
    """``root/{split}/{class}/{i}.{png|jpg}``: ``n`` images per class and split (odd ``i`` PNG, even JPEG)."""
    for split in splits:
        for cls in classes:
            for i in range(n):
                write_image(root / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root
