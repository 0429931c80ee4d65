"""Fixtures for the probe tests: a small ImageFolder of real handwritten digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_digits_folder(root: Path, per_split: dict[str, int]) -> Path:
    """``root/{split}/{digit}/{i}.png``: the first sklearn digits of each class, as 8x8 grayscale PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        start = 0
        for split, n in per_split.items():
            folder = root / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx[start : start + n]:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
            start += n
    return root


@pytest.fixture
def digits_folder(tmp_path: Path) -> Path:
    return write_digits_folder(tmp_path / "digits", {"train": 12, "val": 6, "test": 6})
