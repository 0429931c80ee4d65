import json

import numpy as np
import pytest
from PIL import Image

from transferkit.data.detection.shapes import COLOURS, ShapesConfig, ensure_shapes, make_shapes
from transferkit.data.grounding import read_grounding_jsonl
from transferkit.errors import UserError


def test_make_shapes_writes_a_consistent_grounding_set(tmp_path):
    cfg = ShapesConfig(n=40, seed=3)
    summary = make_shapes(tmp_path / "s", cfg)
    assert summary["splits"]["train"]["images"] == 32 and summary["splits"]["val"]["images"] == 4
    assert json.loads((tmp_path / "s" / "shapes.json").read_text()) == summary
    checked = 0
    for split in ("train", "val", "test"):
        records, errors = read_grounding_jsonl(tmp_path / "s" / f"{split}.jsonl")
        assert errors == []
        for rec in records:
            image = np.array(Image.open(tmp_path / "s" / rec.image))
            assert image.shape == (rec.height, rec.width, 3)
            assert cfg.min_size <= rec.width <= cfg.max_size and cfg.min_size <= rec.height <= cfg.max_size
            assert 1 <= len(rec.objects) <= cfg.max_objects
            for i, obj in enumerate(rec.objects):
                colour_shape, size, state = obj.desc.split("/")
                colour, shape = colour_shape.split()
                assert colour in COLOURS and shape in ("circle", "square", "triangle")
                assert size in ("small", "large") and state in ("visible", "occluded")
                x1, y1, x2, y2 = obj.bbox
                assert 0 <= x1 < x2 <= rec.width and 0 <= y1 < y2 <= rec.height
                # a square drawn last is fully visible: its box holds exactly its pixels
                if shape == "square" and i == len(rec.objects) - 1:
                    inside = image[y1:y2, x1:x2].reshape(-1, 3)
                    assert (inside == COLOURS[colour]).all()
                    checked += 1
    assert checked > 0


def test_generation_is_deterministic_and_reused(tmp_path):
    cfg = ShapesConfig(n=12, seed=1)
    make_shapes(tmp_path / "a", cfg)
    make_shapes(tmp_path / "b", cfg)
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "images/000005.png"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    stamp = (tmp_path / "a" / "train.jsonl").stat().st_mtime_ns
    assert ensure_shapes(tmp_path / "a", cfg) == tmp_path / "a"  # same parameters: reused, not rewritten
    assert (tmp_path / "a" / "train.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other parameters"):
        ensure_shapes(tmp_path / "a", ShapesConfig(n=13, seed=1))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        ensure_shapes(tmp_path / "c", cfg)
    with pytest.raises(UserError, match="n must be"):
        make_shapes(tmp_path / "d", ShapesConfig(n=2))
