"""Weight statistics against numpy."""

from __future__ import annotations

import numpy as np
import torch

from transferkit.analysis.common import sample_indices
from transferkit.analysis.weights import matrix_stats
from transferkit.backbones import build_backbone


def test_matrix_stats_match_numpy():
    w = torch.randn(12, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    s = matrix_stats(w)
    sv = np.linalg.svd(w.reshape(12, -1).numpy(), compute_uv=False)
    assert abs(s["norm"] - np.linalg.norm(w.numpy())) < 1e-4
    assert abs(s["top_singular_value"] - sv[0]) < 1e-4
    assert abs(s["stable_rank"] - (sv**2).sum() / sv[0] ** 2) < 1e-4
    assert abs(matrix_stats(torch.eye(6))["stable_rank"] - 6) < 1e-5
    assert abs(matrix_stats(torch.eye(6))["effective_rank"] - 6) < 1e-4


def test_block_modules_follow_layer_groups():
    vit = build_backbone("vit-micro", image_size=32)
    assert [n for n, _ in vit.named_blocks()] == [f"model.blocks.{i}" for i in range(6)]
    gpt = build_backbone("gpt2-tiny", image_size=32, patch_size=8)
    assert [n for n, _ in gpt.named_blocks()] == ["lm.h.0", "lm.h.1"]
    assert len(build_backbone("convnet-micro", image_size=32).named_blocks()) == 4


def test_sample_indices_cover_every_class():
    labels = [0] * 50 + [1] * 5 + [2] * 45
    idx = sample_indices(labels, 12)
    assert len(idx) == 12 and {labels[i] for i in idx} == {0, 1, 2}
    assert list(sample_indices(labels, None)) == list(range(100))
