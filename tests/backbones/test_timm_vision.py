"""timm adapter: token layouts, timm's layer grouping, pretrained_cfg statistics and weight loading."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import group_parameters

from transferkit.backbones import build_backbone
from transferkit.backbones.timm_vision import TimmBackbone, build_timm, timm_source_head
from transferkit.errors import UnknownBackboneError, UserError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to OpenMP oversubscription on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _images(h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))


@pytest.mark.parametrize("name", ["convnet-micro", "timm:test_convnext:random"])
def test_cnn_tokens_are_the_flattened_feature_map(name):
    bb = build_backbone(name, image_size=32).eval()
    assert isinstance(bb, TimmBackbone)
    assert (bb.num_prefix_tokens, bb.pooling, bb.patch_size) == (0, "mean", 32)
    assert bb.embed_dim == bb.model.num_features
    for h, w in ((32, 32), (64, 96)):
        x = _images(h, w)
        with torch.no_grad():
            tokens = bb.forward_features(x)
            fmap = bb.model.forward_features(bb.normalize(x))  # (B, C, H/32, W/32)
        assert tokens.shape == (2, (h // 32) * (w // 32), bb.embed_dim)
        torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2))  # row-major, channels last
        # mean pooling of the tokens is timm's global average pool
        torch.testing.assert_close(bb.pool(tokens), fmap.mean(dim=(2, 3)))
    # one intermediate per stage, with the stage's channels (timm's feature_info)
    with torch.no_grad():
        inter = bb.forward_intermediates(_images(64, 64), bb.num_blocks)
    stage_info = bb.model.feature_info[-bb.num_blocks :]
    assert [t.shape[-1] for t in inter] == [f["num_chs"] for f in stage_info]
    assert [t.shape[1] for t in inter] == [(64 // f["reduction"]) ** 2 for f in stage_info]


def test_vit_tokens_have_prefix_tokens_and_any_input_size():
    bb = build_backbone("vit-micro", image_size=32).eval()
    assert (bb.num_prefix_tokens, bb.pooling, bb.patch_size, bb.embed_dim) == (1, "cls", 16, 64)
    assert bb.lora_target_modules == ("qkv",)
    for size in (32, 64):
        x = _images(size, size)
        with torch.no_grad():
            tokens = bb.forward_features(x)
            expected = bb.model.forward_features(bb.normalize(x))
        assert tokens.shape == (2, 1 + (size // 16) ** 2, 64)
        torch.testing.assert_close(tokens, expected)
        # cls pooling is exactly what timm's own pre-logits head returns for a cls-pooled ViT
        torch.testing.assert_close(bb(x), bb.model.forward_head(expected, pre_logits=True))
        with torch.no_grad():
            inter = bb.forward_intermediates(x, [0, 2, -1])
        assert [t.shape for t in inter] == [tokens.shape] * 3
        torch.testing.assert_close(inter[-1], tokens)


@pytest.mark.parametrize("name", ["vit-micro", "convnet-micro", "timm:test_convnext:random"])
def test_layer_groups_follow_timm_grouping(name):
    bb = build_backbone(name, image_size=32)
    groups = bb.layer_groups()
    timm_groups = group_parameters(bb.model, bb.model.group_matcher(coarse=True))
    timm_groups = [[f"model.{n}" for n in timm_groups[k]] for k in sorted(timm_groups)]
    rest = set(groups[-1])
    # timm folds the trailing params (final norm) into the last block; we keep them as the last group
    expected = [[n for n in g if n not in rest] for g in timm_groups]
    expected = [g for g in expected if g]
    assert groups[:-1] == expected
    assert bb.num_blocks == len(groups) - 2 == len(expected) - 1
    if name == "vit-micro":
        assert len(groups) == len(bb.model.blocks) + 2
        assert groups[0] == [
            "model.cls_token",
            "model.pos_embed",
            *[n for n in groups[0] if "patch_embed" in n],
        ]
        assert set(groups[-1]) == {"model.norm.weight", "model.norm.bias"}
        assert bb.no_weight_decay() == {"model.cls_token", "model.pos_embed"}
    if name == "convnet-micro":
        assert groups[-1] == [] and len(groups) == 4 + 2  # stem, layer1..layer4, nothing after


def test_params_forward_features_never_uses_are_frozen():
    bb = build_backbone("timm:test_convnext:random", image_size=32)
    # ConvNeXt's head.norm acts on the pooled vector in forward_head, never on the tokens
    assert bb.unused_parameter_names == ["model.head.norm.bias", "model.head.norm.weight"]
    params = dict(bb.named_parameters())
    assert not any(params[n].requires_grad for n in bb.unused_parameter_names)
    assert set(bb.unused_parameter_names) <= set(bb.layer_groups()[-1])
    bb.train()
    bb.forward_features(_images()).square().mean().backward()
    assert all(p.grad is not None for p in params.values() if p.requires_grad)


def test_mean_std_come_from_pretrained_cfg():
    vit = build_backbone("vit-micro", image_size=32)
    assert (
        (vit.mean, vit.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) == (vit.model.pretrained_cfg["mean"],) * 2
    )
    eff = build_backbone("timm:test_efficientnet:random", image_size=32)
    assert eff.mean == pytest.approx((0.485, 0.456, 0.406)) and eff.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert eff.mean == tuple(eff.model.pretrained_cfg["mean"])


def test_unknown_timm_name_is_a_user_error():
    with pytest.raises(UnknownBackboneError, match="vit_tiny_patch16_224") as info:
        build_timm("vit_tinny_patch16_224")  # close match suggested
    assert isinstance(info.value, UserError)
    with pytest.raises(UnknownBackboneError, match="unknown timm model"):
        build_backbone("timm:not_a_model_at_all")
    with pytest.raises(UserError, match="does not accept"):
        build_backbone("vit-micro", image_size=32, not_an_option=3)


def test_pretrained_weights_offline_are_a_user_error():
    with pytest.raises(UserError, match="pretrained_file"):
        build_backbone("vit-tiny", image_size=32)
    with pytest.raises(UserError, match="pretrained"):
        build_timm("test_vit4", pretrained=True, image_size=32)  # timm has no weights for it
    bb = build_backbone("vit-tiny:random", image_size=32)
    assert bb.pretrained is False and bb.embed_dim == 192 and bb.num_blocks == 12


def test_pretrained_file_loads_through_timm(tmp_path):
    source = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    bb = build_backbone("timm:test_vit", image_size=32, pretrained_file=str(path))
    assert bb.pretrained is True
    loaded = bb.model.state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded[k], v), k
    # another image size: timm resamples the position embeddings, every other weight is unchanged
    bb64 = build_backbone("vit-micro", image_size=64, pretrained_file=str(path))
    assert bb64.model.pos_embed.shape == (1, 1 + 16, 64)
    torch.testing.assert_close(bb64.model.pos_embed[:, 0], source.pos_embed[:, 0])
    torch.testing.assert_close(bb64.model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("timm:test_vit", image_size=32, pretrained_file=str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="pretrained=False"):
        build_backbone("timm:test_vit:random", image_size=32, pretrained_file=str(path))


@pytest.mark.parametrize("name", ["vit-micro", "convnet-micro"])
def test_grad_checkpointing_recomputes_blocks(name):
    bb = build_backbone(name, image_size=32, drop_path_rate=0.1)
    block = bb.model.blocks[0] if name == "vit-micro" else bb.model.layer1[0]
    if name == "vit-micro":
        assert bb.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    calls = []  # a pre-hook: non-reentrant checkpointing stops the recompute once it has what backward needs
    block.register_forward_pre_hook(lambda *_: calls.append(1))
    bb.train()
    bb.forward_features(_images()).sum().backward()
    assert len(calls) == 1
    bb.set_grad_checkpointing(True)
    calls.clear()
    bb.forward_features(_images()).sum().backward()
    assert len(calls) == 2


@pytest.mark.parametrize(
    "arch,kwargs,size",
    [
        ("test_vit", {}, 64),  # ViT, class-token pooling
        ("test_vit", {"global_pool": "avg"}, 64),  # ViT, mean pooling + fc_norm
        ("test_resnet", {}, 64),  # CNN, global average pooling
    ],
)
def test_timm_head_on_cached_pooled_features_equals_the_full_model(arch, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=7, **kwargs).eval()
    x = torch.rand(5, 3, size, size)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
        tokens = model.forward_features(x)
    head = timm_source_head(model, tokens.ndim)
    assert head is not None and head.num_classes == 7
    if tokens.ndim == 3:
        pooled = tokens[:, 0] if head.pooling == "cls" else tokens[:, model.num_prefix_tokens :].mean(1)
    else:
        assert head.pooling == "mean"
        pooled = tokens.flatten(2).mean(2)
    np.testing.assert_allclose(head(pooled.numpy()), expected, atol=1e-5)


def test_no_head_for_headless_or_random_models():
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    assert timm_source_head(model, 3) is None
    bb = build_backbone("vit-micro", image_size=32)  # random init: its head would be meaningless
    assert bb.source_head() is None
