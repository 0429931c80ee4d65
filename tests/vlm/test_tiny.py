"""The tiny random-init Qwen2.5-VL: a complete save_pretrained directory that loads through the real path."""

from __future__ import annotations

import json

import torch
from PIL import Image

from transferkit.vlm.model import load_vlm, resolve_model_path
from transferkit.vlm.tiny import QWEN_SPECIAL_TOKENS, TINY_NAME, ensure_tiny_qwen2_5_vl


def test_tiny_dir_loads_through_from_pretrained(tiny_vlm_dir, tiny_processor):
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        assert (tiny_vlm_dir / f).is_file(), f
    config = json.loads((tiny_vlm_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    model = load_vlm(str(tiny_vlm_dir))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 500_000
    tok = tiny_processor.tokenizer
    for t in QWEN_SPECIAL_TOKENS:  # each special token is one token, as in Qwen's vocabulary
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    # byte-level BPE: any text round-trips
    text = 'Ünïcode ✓ [{"bbox_2d": [1, 2, 3, 4], "desc": "x"}]'
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # a forward pass with an image
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = tiny_processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    enc = tiny_processor(text=[text], images=[Image.new("RGB", (40, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tok))


def test_tiny_name_resolves_to_a_cached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_MODELS_DIR", str(tmp_path))
    path = resolve_model_path(TINY_NAME)
    assert path.startswith(str(tmp_path)) and (tmp_path / path).is_dir()
    stamp = (tmp_path / path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_qwen2_5_vl(tmp_path) == tmp_path / path.split("/")[-1]  # built once
    assert (tmp_path / path / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
