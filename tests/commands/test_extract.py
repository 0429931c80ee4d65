"""``transferkit extract``: features cached on the first run, read back on the second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.cli import main


def write_folder(root: Path) -> Path:
    """A tiny 3-class ImageFolder of real digits (8 train, 4 val, 4 test images per class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for c in range(3):
        idx = np.flatnonzero(digits.target == c)
        for split, sl in (("train", slice(0, 8)), ("val", slice(8, 12)), ("test", slice(12, 16))):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in idx[sl]:
                Image.fromarray(images[i]).save(root / split / str(c) / f"{i}.png")
    return root


def test_extract_then_cache_hit(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    args = ["extract", "--backbones", "vit-micro,gpt2-tiny", "--data", str(data), "--data.image_size", "32",
            "--cache_dir", str(tmp_path / "cache"), "--layers", "2", "--splits", "train,val",
            "--runs_dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("extracted") == 4 and "24x2x64" in out and "12x2x64" in out
    entries = sorted(p.parent.name for p in (tmp_path / "cache").rglob("meta.json"))
    assert entries == ["L2-cls"] * 2 + ["L2-last"] * 2  # each backbone's default pooling, 2 splits
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count(" hit ") == 4 and "extracted" not in out
    import json

    first = json.loads((tmp_path / "runs" / "extract" / "metrics.json").read_text())
    second = json.loads((tmp_path / "runs" / "extract-2" / "metrics.json").read_text())
    assert (
        not first["features"]["vit-micro"]["train"]["cache_hit"]
        and second["features"]["vit-micro"]["train"]["cache_hit"]
    )
    assert first["features"]["gpt2-tiny"]["val"]["shape"] == [12, 2, 64]
    assert (tmp_path / "runs" / "extract" / "config.yaml").is_file()


def test_extract_bad_split_is_one_line(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    assert main(["extract", "--data", str(data), "--splits", "train,dev", "--cache_dir", str(tmp_path),
                 "--runs_dir", str(tmp_path / "runs")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "unknown split(s) ['dev']" in err and "Traceback" not in err
    assert main(["extract", "--data", str(tmp_path / "missing")]) == 2
    assert "neither a data source" in capsys.readouterr().err
