"""Registry-wide backbone contract: every registered backbone that builds offline is checked here.

A newly registered backbone is picked up with no new test code. Offline entries are built as registered
(their weights, packaged or tiny random-init, are local); timm entries whose weights need the hub are checked
through their ``:random`` twin, since timm defines the architecture in code.
"""

from __future__ import annotations

import math
from collections import Counter

import huggingface_hub.constants
import pytest
import torch

from transferkit.backbones import build_backbone, registered_backbones
from transferkit.backbones.base import Backbone
from transferkit.errors import UnknownBackboneError, UserError

IMAGE_SIZE = 32
ENTRIES = registered_backbones()
OFFLINE = sorted(n for n, e in ENTRIES.items() if e.offline)
RANDOM_TWINS = sorted(f"{n}:random" for n, e in ENTRIES.items() if not e.offline and e.family == "timm")
HUB_ONLY = sorted(n for n, e in ENTRIES.items() if not e.offline)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to OpenMP oversubscription on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    """No test here may reach the network (and wait for its retries)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _images(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _loss(bb: Backbone, images: torch.Tensor) -> torch.Tensor:
    tokens = bb.forward_features(images)
    return tokens.square().mean() + bb.pool(tokens).square().mean()


def _grads(bb: Backbone, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    bb.train()
    bb.zero_grad(set_to_none=True)
    with torch.random.fork_rng():  # same dropout / RoPE-jitter draws in both runs, global RNG untouched
        torch.manual_seed(seed)
        _loss(bb, images).backward()
    return {n: p.grad.clone() for n, p in bb.named_parameters() if p.requires_grad}


def _used_parameter_names(bb: Backbone, images: torch.Tensor) -> set[str]:
    """Parameters that receive a gradient from ``pool(forward_features(images)).sum()``, every parameter made
    trainable for the pass (frozen ones too); ``requires_grad`` and ``.grad`` are restored afterwards."""
    params = dict(bb.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        bb.zero_grad(set_to_none=True)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            bb.pool(bb.forward_features(images)).sum().backward()
        return {n for n, p in params.items() if p.grad is not None}
    finally:
        bb.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])


def test_registry_is_not_empty():
    assert OFFLINE, "no offline backbones registered"
    for family in ("hf_vision", "timm", "language"):
        assert any(e.family == family for e in ENTRIES.values()), family
    for name, entry in ENTRIES.items():
        assert entry.description, f"backbone '{name}' has no description"


@pytest.mark.parametrize("name", OFFLINE + RANDOM_TWINS)
def test_backbone_contract(name, tmp_path):
    bb = build_backbone(name, image_size=IMAGE_SIZE)
    assert isinstance(bb, Backbone)
    assert bb.input_size == IMAGE_SIZE
    assert len(bb.mean) == 3 and len(bb.std) == 3 and min(bb.std) > 0
    x = _images()

    # forward: tokens (B, N, D) with N = prefix tokens + one token per patch (or per final-stage pixel)
    bb.eval()
    with torch.no_grad():
        tokens = bb.forward_features(x)
        pooled = bb(x)
    n_patches = (IMAGE_SIZE // bb.patch_size) ** 2
    assert tokens.shape == (2, bb.num_prefix_tokens + n_patches, bb.embed_dim)
    assert torch.isfinite(tokens).all()
    assert pooled.shape == (2, bb.pooled_dim())
    torch.testing.assert_close(pooled, bb.pool(tokens))
    for pooling in bb.supported_poolings:
        assert bb.pool(tokens, pooling).shape == (2, bb.pooled_dim(pooling)), pooling
    with pytest.raises(UserError):
        bb.check_pooling("no-such-pooling")

    # layer groups: every parameter exactly once, [stem, block_0 .. block_{n-1}, rest]
    groups = bb.layer_groups()
    assert len(groups) == bb.num_blocks + 2
    assert all(groups[1:-1]), "empty block group"
    counts = Counter(n for g in groups for n in g)
    params = dict(bb.named_parameters())
    assert set(counts) == set(params)
    assert max(counts.values()) == 1
    assert bb.no_weight_decay() <= set(params)

    # intermediates: one (B, N_i, D_i) per block; the last one is the token output
    with torch.no_grad():
        inter = bb.forward_intermediates(x, bb.num_blocks)
        first_last = bb.forward_intermediates(x, [0, -1])
    assert len(inter) == bb.num_blocks
    assert all(t.ndim == 3 and t.shape[0] == 2 for t in inter)
    torch.testing.assert_close(inter[-1], tokens, rtol=1e-4, atol=1e-5)
    assert len(first_last) == (2 if bb.num_blocks > 1 else 1)
    torch.testing.assert_close(first_last[-1], tokens, rtol=1e-4, atol=1e-5)

    # backward: a finite gradient on every trainable parameter
    grads = _grads(bb, x)
    assert set(grads) == {n for n, p in params.items() if p.requires_grad}
    assert grads, "no trainable parameters"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, bad

    # the :random twin builds, claims no pretrained weights, and has other weights until loaded
    base = name.removesuffix(":random")
    twin = build_backbone(f"{base}:random", image_size=IMAGE_SIZE).eval()
    assert twin.pretrained is False
    assert type(twin) is type(bb)
    assert set(dict(twin.named_parameters())) == set(params)
    bb.eval()
    with torch.no_grad():
        before = twin(x)
    assert not torch.allclose(before, pooled)

    # state dict round trip through a file gives identical outputs
    torch.save(bb.state_dict(), tmp_path / "backbone.pt")
    twin.load_state_dict(torch.load(tmp_path / "backbone.pt"))
    with torch.no_grad():
        torch.testing.assert_close(twin.forward_features(x), bb.forward_features(x))

    # gradient checkpointing: same loss gradients as without it
    twin.set_grad_checkpointing(True)
    grads_ckpt = _grads(twin, x)
    assert set(grads_ckpt) == set(grads)
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)
    twin.set_grad_checkpointing(False)

    _check_interface(bb, x, tokens)

    # num_params counts exactly the parameters an image forward + backward reaches; the rest is left out
    used = _used_parameter_names(bb, x)
    unused = bb.unused_parameters()
    assert set(unused) == set(params) - used
    assert not any(params[n].requires_grad for n in unused)  # the adapter froze them
    assert bb.num_params() == sum(params[n].numel() for n in used) > 0
    assert bb.num_params(include_unused=True) == sum(p.numel() for p in params.values())
    held_out = {k: v for k, v in bb.left_out_parameters().items() if k not in bb.removed_parameters}
    assert sum(held_out.values()) == bb.num_params(include_unused=True) - bb.num_params()
    info = bb.info()
    assert info.num_params == bb.num_params() and info.left_out_params == bb.left_out_parameters()
    assert (info.embed_dim, info.patch_size, info.num_prefix_tokens) == (
        bb.embed_dim,
        bb.patch_size,
        bb.num_prefix_tokens,
    )
    assert math.isclose(sum(info.std), sum(bb.std))


def _check_interface(bb: Backbone, x: torch.Tensor, tokens: torch.Tensor) -> None:
    """The members callers use instead of inspecting the adapter: modality, wrapped model, blocks, the input-size
    check, attention maps, the source head, the HF config, the freeze rule."""
    assert bb.modality in ("vision", "language", "vision-language")
    wrapped = bb.wrapped
    assert isinstance(wrapped, torch.nn.Module)
    assert any(m is wrapped for m in bb.children())  # the adapter's own child, under one name
    names = [n for n, _ in bb.named_blocks()]
    assert len(names) == bb.num_blocks
    groups = bb.layer_groups()
    for (name, module), group in zip(bb.named_blocks(), groups[1:-1]):
        assert {f"{name}.{n}" for n, _ in module.named_parameters()} >= set(group), name
    assert bb.check_input_size(IMAGE_SIZE) == IMAGE_SIZE
    with pytest.raises(UserError, match="smaller than the patch size"):
        bb.check_input_size(bb.patch_size - 1)
    if bb.needs_patch_multiple:
        with pytest.raises(UserError, match="not a multiple of the patch size"):
            bb.check_input_size(IMAGE_SIZE + 1)
    try:
        maps = bb.attention_maps(x)
    except UserError as e:  # a CNN: says so, and where to look instead
        assert "no attention maps" in str(e)
        assert not bb.needs_patch_multiple or bb.modality != "language"
    else:
        assert len(maps) == bb.num_blocks
        for a in maps:
            assert a.ndim == 4 and a.shape[0] == 2 and a.shape[-1] == a.shape[-2] == tokens.shape[1]
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), rtol=1e-4, atol=1e-4)
    assert bb.source_head() is None or callable(bb.source_head())
    assert bb.hf_config() is None or hasattr(bb.hf_config(), "save_pretrained")
    # the one freeze rule: embedding + first block frozen, new (randomly made) parameters never
    frozen = bb.frozen_names(1)
    assert frozen == (set(groups[0]) | set(groups[1])) - bb.new_parameter_names()
    assert bb.frozen_names(None, include_new=True) == {n for n, _ in bb.named_parameters()}
    with pytest.raises(UserError, match="freeze_blocks="):
        bb.frozen_names(bb.num_blocks + 1)
    fixed = {n for n, p in bb.named_parameters() if not p.requires_grad}
    bb.set_trainable(frozen)
    assert {n for n, p in bb.named_parameters() if not p.requires_grad} == frozen | fixed
    bb.set_trainable(set())
    assert {n for n, p in bb.named_parameters() if not p.requires_grad} == fixed  # the adapter's own stay


@pytest.mark.parametrize("name", HUB_ONLY)
def test_hub_backbones_fail_clearly_offline(name):
    """Without network, hub-backed names raise a UserError that says what to do (never a raw OSError)."""
    try:
        bb = build_backbone(name, image_size=IMAGE_SIZE)
    except UserError as e:
        msg = str(e)
        assert "save_pretrained" in msg or "pretrained_file" in msg, msg
        assert ":random" in msg or "offline backbone" in msg, msg
    else:  # the weights are in the local Hugging Face cache
        assert isinstance(bb, Backbone)


def test_unknown_name_lists_known_backbones():
    with pytest.raises(UnknownBackboneError) as info:
        build_backbone("dinov9-giant")
    msg = str(info.value)
    assert "dinov9-giant" in msg
    for known in OFFLINE[:3]:
        assert known in msg
    assert isinstance(info.value, UserError)
