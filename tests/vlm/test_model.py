"""Qwen2.5-VL loading and its components."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.errors import UserError
from transferkit.vlm.model import (
    component_of,
    component_parameters,
    load_processor,
    load_vlm,
    lora_target_regex,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_components_cover_every_parameter(tiny_vlm_dir):
    model = load_vlm(str(tiny_vlm_dir))
    groups = component_parameters(model)
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    names = {c: {n for n, _ in v} for c, v in groups.items()}
    assert all(n.startswith("model.visual.merger.") for n in names["merger"]) and names["merger"]
    assert all(n.startswith("model.visual.") and ".merger." not in n for n in names["vision"])
    assert "lm_head.weight" in names["llm"] and any("language_model.layers.0" in n for n in names["llm"])
    assert component_of("model.visual.blocks.0.attn.qkv.lora_A.default.weight") == "vision"
    with pytest.raises(ValueError, match="no known"):
        component_of("head.weight")


def test_lora_regex_selects_llm_linears_only(tiny_vlm_dir):
    import re

    model = load_vlm(str(tiny_vlm_dir))
    rx = re.compile(lora_target_regex(["q_proj", "down_proj"]))
    hits = [n for n, _ in model.named_modules() if rx.fullmatch(n)]
    assert hits and all(".language_model." in n for n in hits)
    assert {n.rsplit(".", 1)[1] for n in hits} == {"q_proj", "down_proj"}


def test_load_errors_are_user_errors(tmp_path, tiny_vlm_dir):
    with pytest.raises(UserError, match="network access"):
        load_vlm(str(tmp_path / "no-such-model"))
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="Qwen2.5-VL"):
        load_vlm(str(other))
    with pytest.raises(UserError, match="dtype"):
        load_vlm(str(tiny_vlm_dir), dtype="float8")


def test_bfloat16_load(tiny_vlm_dir):
    model = load_vlm(str(tiny_vlm_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert load_processor(str(tiny_vlm_dir)).chat_template
