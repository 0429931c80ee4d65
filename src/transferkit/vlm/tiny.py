"""A tiny random-init Qwen2.5-VL (model + processor) built offline, for tests, demos and CPU smoke runs.

:func:`make_tiny_qwen2_5_vl` writes a complete ``save_pretrained`` directory — ``config.json``,
``model.safetensors``, ``tokenizer.json``, ``processor_config.json``, ``chat_template.jinja`` — that loads
through the real ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` / ``AutoProcessor.from_pretrained``
path, exactly like ``Qwen/Qwen2.5-VL-3B-Instruct`` does:

- model: the Qwen2.5-VL architecture (window-attention ViT with 2-D RoPE, 2x2 patch merger, Qwen2 LLM with
  3-D mRoPE) at toy size: vision 2 blocks of width 32, LLM 2 layers of width 64, ~0.2M parameters;
- tokenizer: a byte-level BPE (Qwen's tokenizer family) trained here on grounding-style text, with Qwen's
  special tokens (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ...);
- image processor: ``Qwen2VLImageProcessor`` (patch 14, merge 2) with small ``min_pixels``/``max_pixels`` so
  images of 32-112 px become 4-16 visual tokens;
- chat template: Qwen2-VL's ChatML template (the one Qwen2.5-VL ships).

The registered name :data:`TINY_NAME` resolves to such a directory under the model cache
(``$TRANSFERKIT_MODELS_DIR``, else ``$XDG_CACHE_HOME/transferkit/models``, else
``~/.cache/transferkit/models``), created on first use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TINY_NAME = "qwen2.5-vl-tiny"
TINY_VERSION = 1

#: Qwen2/Qwen2.5-VL special tokens, in the order the real vocabulary lists them
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL's chat template (shipped unchanged with Qwen2.5-VL)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Text the tiny BPE learns its merges from: chat roles, the grounding prompt, JSON answers with the
    shapes set's descriptions and numbers."""
    from transferkit.vlm.chat import DEFAULT_PROMPT

    colours = ("red", "green", "blue", "yellow")
    shapes = ("circle", "square", "triangle")
    texts = [
        "system\nYou are a helpful assistant.",
        "user\n",
        "assistant\n",
        DEFAULT_PROMPT,
        "```json\n[]\n```",
    ]
    i = 0
    for c in colours:
        for s in shapes:
            for size in ("small", "large"):
                for vis in ("visible", "occluded"):
                    box = [i % 97, (3 * i) % 89, 20 + i % 71, 30 + (7 * i) % 67]
                    texts.append(json.dumps([{"bbox_2d": box, "desc": f"{c} {s}/{size}/{vis}"}]))
                    i += 1
    texts += [" ".join(str(n) for n in range(k, k + 20)) for k in range(0, 1200, 20)]
    return texts * 4


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (any text encodes) with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        model_max_length=32768,
    )


def make_tiny_qwen2_5_vl(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 112 * 112,
    text_hidden: int = 64,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
) -> Path:
    """Write a tiny random-init Qwen2.5-VL model + processor to ``out`` with ``save_pretrained``.

    Returns ``out``. Load it with :func:`transferkit.vlm.model.load_vlm` (or transformers'
    ``from_pretrained``). ``min_pixels``/``max_pixels`` bound the image area after Qwen's smart resize.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    heads = max(1, text_hidden // 16)
    head_dim = text_hidden // heads
    # mRoPE splits head_dim / 2 rotary frequencies over (temporal, height, width); Qwen2.5-VL uses 16/24/24
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 1e6},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_layers,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=max(1, vision_hidden // 16),
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            out_hidden_size=text_hidden,
            fullatt_block_indexes=[vision_layers - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "transferkit_tiny.json").write_text(
        json.dumps({"name": TINY_NAME, "version": TINY_VERSION, "seed": seed})
    )
    return out


def models_dir() -> Path:
    """``$TRANSFERKIT_MODELS_DIR``, else ``$XDG_CACHE_HOME/transferkit/models``, else
    ``~/.cache/transferkit/models``."""
    env = os.environ.get("TRANSFERKIT_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transferkit" / "models"


def ensure_tiny_qwen2_5_vl(root: str | os.PathLike | None = None) -> Path:
    """The directory of the tiny model under ``root`` (default :func:`models_dir`), built on first use.

    Built in a temporary sibling directory and renamed into place, so concurrent first uses (DDP ranks,
    parallel tests) never see a half-written model.
    """
    root = Path(root) if root is not None else models_dir()
    target = root / f"{TINY_NAME}-v{TINY_VERSION}"
    if (target / "transferkit_tiny.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=root))
    try:
        make_tiny_qwen2_5_vl(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "transferkit_tiny.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the tiny random-init Qwen2.5-VL in %s", target)
    return target
