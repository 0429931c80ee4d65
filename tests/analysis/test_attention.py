"""Attention maps from timm (hooked softmax), HF vision and language-model backbones (eager attentions)."""

from __future__ import annotations

import pytest
import torch

from transferkit.analysis.attention import attention_maps, head_statistics, patch_grid, query_index, rollout
from transferkit.backbones import build_backbone
from transferkit.errors import UserError


@pytest.mark.parametrize("name", ["vit-micro", "dinov2-tiny", "clip-vit-tiny", "gpt2-tiny", "bert-tiny"])
def test_attention_maps_are_row_stochastic_per_block(name):
    torch.manual_seed(0)
    patch = 8 if name in ("gpt2-tiny", "bert-tiny") else None  # language backbones: 4x4 patches of 8 px
    bb = build_backbone(name, image_size=32, patch_size=patch).eval()
    x = torch.rand(2, 3, 32, 32)
    tokens = bb.forward_features(x)
    attns = attention_maps(bb, x)
    assert len(attns) == bb.num_blocks
    for a in attns:
        assert a.shape[0] == 2 and a.shape[-1] == a.shape[-2] == tokens.shape[1]
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-4, rtol=0)
    # the model is left as it was: same outputs after the analysis forward
    torch.testing.assert_close(bb.forward_features(x), tokens)
    grid = patch_grid(tokens.shape[1], bb.num_prefix_tokens, (32, 32))
    assert grid[0] * grid[1] == tokens.shape[1] - bb.num_prefix_tokens
    r = rollout(attns)
    torch.testing.assert_close(r.sum(-1), torch.ones(r.shape[:-1]), atol=1e-4, rtol=0)
    stats = head_statistics(attns[-1], bb.num_prefix_tokens, grid, 32 / grid[1])
    assert len(stats["entropy"]) == attns[-1].shape[1] and all(d >= 0 for d in stats["mean_distance"])


def test_causal_lm_attends_backwards_and_shows_the_last_token():
    bb = build_backbone("gpt2-tiny", image_size=32, patch_size=8).eval()
    a = attention_maps(bb, torch.rand(1, 3, 32, 32))[0][0, 0]
    assert torch.all(torch.triu(a, diagonal=1) == 0)  # no attention to later tokens
    assert query_index(bb) == -1 and query_index(build_backbone("vit-micro", image_size=32)) == 0


def test_cnn_has_no_attention():
    with pytest.raises(UserError, match="no attention maps"):
        attention_maps(build_backbone("convnet-micro", image_size=32), torch.rand(1, 3, 32, 32))
