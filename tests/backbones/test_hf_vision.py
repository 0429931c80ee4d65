"""HF vision adapters loaded through the real ``from_pretrained`` path from ``save_pretrained`` directories."""

from __future__ import annotations

import json
import logging

import huggingface_hub.constants
import pytest
import torch
import transformers as T

from transferkit.backbones import build_backbone, hf_vision
from transferkit.backbones.hf_vision import HFVisionBackbone, build_hf_vision, tiny_config
from transferkit.errors import UserError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = (hf_vision.OPENAI_CLIP_MEAN, hf_vision.OPENAI_CLIP_STD)
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
_TEXT_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=8,
    image_size=32,
)


def _reference(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny random HF model to save, and the vision module whose weights the backbone must hold."""
    if kind == "clip_full":
        model = T.CLIPModel(
            T.CLIPConfig(text_config={**_TEXT, **_TEXT_IDS}, vision_config=_VISION, projection_dim=16)
        )
        return model, model.vision_model
    if kind == "siglip_full":
        model = T.SiglipModel(T.SiglipConfig(text_config={**_TEXT, **_TEXT_IDS}, vision_config=_VISION))
        return model, model.vision_model
    config = tiny_config(kind)
    if kind == "siglip_vision_model":
        config.vision_use_head = True  # a real SigLIP tower has the pooling head; the adapter drops it
    model = T.AutoModel.from_config(config)
    return model, model


# kind -> (model_type in config.json, prefix tokens, default pooling, expected mean/std without preprocessor)
FAMILIES = {
    "dinov2": ("dinov2", 1, "cls", IMAGENET),
    "dinov2_with_registers": ("dinov2_with_registers", 3, "cls", IMAGENET),
    "dinov3_vit": ("dinov3_vit", 3, "cls", IMAGENET),
    "dinov3_convnext": ("dinov3_convnext", 1, "cls", IMAGENET),
    "clip_vision_model": ("clip_vision_model", 1, "cls", CLIP),
    "clip_full": ("clip", 1, "cls", CLIP),
    "siglip_vision_model": ("siglip_vision_model", 0, "mean", HALF),
    "siglip_full": ("siglip", 0, "mean", HALF),
}


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


def _expected_tokens(kind: str, vision: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the HF model itself returns for normalised pixels, in the adapter's token layout."""
    kwargs = {"interpolate_pos_encoding": True} if kind.startswith(("clip", "siglip")) else {}
    out = vision(pixel_values=pixels, **kwargs)
    if kind.startswith("clip"):  # adapter: post_layernorm on every token; CLS equals pooler_output
        tokens = vision.post_layernorm(out.last_hidden_state)
        torch.testing.assert_close(tokens[:, 0], out.pooler_output)
        return tokens
    return out.last_hidden_state


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_pretrained_load_matches_saved_model(kind, tmp_path, caplog):
    model_type, n_prefix, pooling, (mean, std) = FAMILIES[kind]
    model, vision = _reference(kind)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    vision.eval()

    with caplog.at_level(logging.WARNING, logger="transferkit"):
        bb = build_backbone(str(tmp_path), image_size=32)
    assert isinstance(bb, HFVisionBackbone)
    ours = [r for r in caplog.records if r.name.startswith("transferkit") and r.levelno >= logging.WARNING]
    assert not ours, caplog.text  # e.g. no "weights not in the checkpoint" warning
    assert bb.pretrained is True
    assert (bb.num_prefix_tokens, bb.pooling) == (n_prefix, pooling)
    assert bb.mean == pytest.approx(mean) and bb.std == pytest.approx(std)

    # identical weights: every parameter of the saved vision module, nothing else
    ref = dict(vision.named_parameters())
    ref = {n: p for n, p in ref.items() if "mask_token" not in n and not n.startswith("head.")}
    loaded = {n.removeprefix("model."): p for n, p in bb.named_parameters()}
    assert set(loaded) == set(ref)
    for n, p in ref.items():
        assert torch.equal(loaded[n], p), n

    # identical outputs: the adapter's tokens are the HF model's, on any input size (non-square too)
    bb.eval()
    for h, w in ((32, 32), (48, 32)):
        images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        pixels = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            tokens = bb.forward_features(images)
            expected = _expected_tokens(kind, vision, pixels)
        assert tokens.shape == (2, n_prefix + (h // bb.patch_size) * (w // bb.patch_size), bb.embed_dim)
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
    if kind == "dinov3_convnext":  # the pooled class token is HF's pooler_output
        with torch.no_grad():
            torch.testing.assert_close(bb(images), vision(pixel_values=pixels).pooler_output)

    # pretrained=False: the same architecture with other (random) weights
    twin = build_backbone(f"{tmp_path}:random", image_size=32)
    assert twin.pretrained is False
    twin_params = {n.removeprefix("model."): p for n, p in twin.named_parameters()}
    assert {n: p.shape for n, p in twin_params.items()} == {n: p.shape for n, p in ref.items()}
    drawn = [n for n, p in ref.items() if p.ndim >= 2 and p.std() > 0]  # not constant-initialised
    same = [n for n in drawn if torch.equal(twin_params[n], ref[n])]
    assert drawn and not same, same  # every random weight matrix / kernel / embedding is re-drawn


def test_preprocessor_config_sets_mean_std(tmp_path):
    model, _ = _reference("dinov2")
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "size": {"shortest_edge": 32}}
        )
    )
    bb = build_backbone(str(tmp_path), image_size=32)
    assert bb.mean == pytest.approx((0.1, 0.2, 0.3))
    assert bb.std == pytest.approx((0.4, 0.5, 0.6))
    images = torch.rand(1, 3, 32, 32)
    expected = (images - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.4, 0.5, 0.6]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(bb.normalize(images), expected)

    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2], "image_std": 0.5})
    )
    with pytest.raises(UserError, match="image_mean"):
        build_backbone(str(tmp_path), image_size=32)


def test_directory_without_config_is_a_user_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="config.json"):
        build_backbone(str(tmp_path))
    with pytest.raises(UserError, match="config.json"):
        build_hf_vision(str(tmp_path))
    with pytest.raises(UserError, match="no such directory"):
        build_hf_vision(str(tmp_path / "missing"))


def test_unsupported_model_type_is_a_user_error(tmp_path):
    T.ViTModel(T.ViTConfig(**_VISION)).save_pretrained(tmp_path)  # model_type 'vit': not a supported family
    with pytest.raises(UserError, match="'vit'"):
        build_backbone(str(tmp_path))
    with pytest.raises(UserError, match="supported types"):
        build_hf_vision(str(tmp_path))


def test_hub_id_offline_is_a_user_error():
    with pytest.raises(UserError, match="save_pretrained"):
        build_hf_vision("facebook/dinov2-small")


def test_options(tmp_path, caplog):
    model, _ = _reference("dinov2")
    model.save_pretrained(tmp_path)
    bb = build_backbone(str(tmp_path), image_size=32, drop_path_rate=0.2)
    assert bb.model.config.drop_path_rate == 0.2
    assert bb.model.encoder.layer[0].drop_path.drop_prob == 0.2
    eager = build_backbone(str(tmp_path), image_size=32, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    with pytest.raises(UserError, match="unknown option"):
        build_backbone(str(tmp_path), image_size=32, not_an_option=1)
    with pytest.raises(UserError, match="pooling"):
        build_backbone("siglip-tiny", image_size=32, pooling="cls")  # SigLIP has no CLS token
    # options of other families are an error naming the option, never a silent "ignoring"
    for option, message in (
        ({"patch_size": 4}, "patch_size applies to language-model backbones"),
        ({"keep_position_embeddings": False}, "keep_position_embeddings applies to language-model"),
        ({"drop_path_rate": 0.1}, "no stochastic depth: remove model.backbone.drop_path_rate"),
    ):
        with pytest.raises(UserError, match=message):
            build_backbone("clip-vit-tiny", image_size=32, **option)


@pytest.mark.parametrize(
    "name", ["dinov2-tiny", "dinov3-vit-tiny", "dinov3-convnext-tiny", "clip-vit-tiny", "siglip-tiny"]
)
def test_training_helpers(name):
    bb = build_backbone(name, image_size=32)
    params = dict(bb.named_parameters())
    assert not any("mask_token" in n or ".head." in n for n in params)  # unused parameters are removed
    # LoRA targets name real modules: two per block (ConvNeXt: per layer)
    suffixes = {n.rsplit(".", 1)[-1] for n, _ in bb.named_modules()}
    assert set(bb.lora_target_modules) <= suffixes
    # no weight decay on position embeddings / prefix tokens
    nwd = bb.no_weight_decay()
    assert nwd <= set(params)
    if not name.startswith("dinov3-convnext"):
        assert any("position_embedding" in n or "cls_token" in n for n in nwd), nwd
    # layer groups are ordered: the first block group holds block 0, the last holds the final norm
    groups = bb.layer_groups()
    assert groups[0] and groups[-1]
    assert all(any(f".{i}." in n for n in groups[i + 1]) for i in range(bb.num_blocks))

    # gradient checkpointing really recomputes block 0 in backward (a module inside it runs twice)
    calls = []
    leaf = next(m for m in bb.blocks[0].modules() if list(m.parameters(recurse=False)))
    leaf.register_forward_hook(lambda *_: calls.append(1))
    bb.train()
    bb.forward_features(torch.rand(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 1
    bb.set_grad_checkpointing(True)
    calls.clear()
    bb.forward_features(torch.rand(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 2
    bb.set_grad_checkpointing(False)
    calls.clear()
    bb.forward_features(torch.rand(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 1
    info = bb.info()
    assert info.pretrained is False and info.family == "hf_vision" and info.extra["model_type"]


def test_tiny_variants_never_claim_pretrained_weights():
    bb = build_backbone("dinov2-tiny", pretrained=True, image_size=32)
    assert bb.pretrained is False
    assert bb.info().source.startswith("random-init")
