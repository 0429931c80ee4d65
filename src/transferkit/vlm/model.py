"""Vision-language models (Qwen2.5-VL): loading, and the components that train or freeze separately.

:func:`load_vlm` loads ``Qwen2_5_VLForConditionalGeneration`` and its processor through transformers'
``from_pretrained`` from a hub id (``Qwen/Qwen2.5-VL-3B-Instruct``, online), a local ``save_pretrained``
directory, or the offline name ``qwen2.5-vl-tiny`` (a tiny random-init model built on first use, see
:mod:`transferkit.vlm.tiny`).

Components (:func:`component_of`), the units of ``freeze`` and of per-component learning rates:

- ``vision``: the vision encoder (``model.visual``: patch embedding and ViT blocks), merger excluded;
- ``merger``: the vision-language merger (``model.visual.merger``, the 2x2 patch merger MLP into the LLM width);
- ``llm``: the language model (``model.language_model``: embeddings, decoder layers, final norm) and ``lm_head``.

A detection head on the LLM's hidden states, when a task adds one, is the fourth component (``det_head``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from transferkit.errors import UserError

log = logging.getLogger(__name__)

VLM_COMPONENTS = ("vision", "merger", "llm")
DTYPES: dict[str, torch.dtype | str] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}


def resolve_model_path(model_path: str) -> str:
    """The hub id or local directory ``from_pretrained`` should load for ``model_path``.

    ``qwen2.5-vl-tiny`` becomes the tiny model's cache directory (built on first use); anything else is
    returned unchanged (a local directory or a hub id)."""
    from transferkit.vlm.tiny import TINY_NAME, ensure_tiny_qwen2_5_vl

    name = model_path.strip()
    if name.lower() == TINY_NAME:
        return str(ensure_tiny_qwen2_5_vl())
    return name


def _load_error(model_path: str, e: Exception) -> UserError:
    local = Path(model_path).expanduser()
    if local.exists():
        return UserError(f"cannot load a Qwen2.5-VL model from '{model_path}': {type(e).__name__}: {e}")
    return UserError(
        f"cannot load '{model_path}' ({type(e).__name__}: {e}). Hub ids such as Qwen/Qwen2.5-VL-3B-Instruct need "
        "network access (or a filled HF cache); offline, give a local save_pretrained directory or 'qwen2.5-vl-tiny'"
    )


def load_processor(model_path: str) -> Any:
    """The model's processor (tokenizer + ``Qwen2VLImageProcessor`` + chat template)."""
    from transformers import AutoProcessor

    path = resolve_model_path(model_path)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _load_error(model_path, e) from None
    if not getattr(processor, "chat_template", None):
        raise UserError(
            f"the processor of '{model_path}' has no chat template; use an instruct/chat checkpoint"
        )
    if not hasattr(processor, "image_processor") or not hasattr(processor.image_processor, "merge_size"):
        raise UserError(f"'{model_path}' has no Qwen2-VL-style image processor (patch_size/merge_size)")
    return processor


def load_vlm(
    model_path: str,
    *,
    dtype: Literal["float32", "bfloat16", "auto"] = "float32",
    attn_implementation: str | None = "sdpa",
) -> nn.Module:
    """``Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path)`` with a clear error on failure.

    ``dtype``: ``float32`` (for ``bf16-mixed``/``32-true`` training), ``bfloat16`` (for ``bf16-true``) or
    ``auto`` (the checkpoint's). ``attn_implementation``: ``sdpa``, ``eager`` or ``flash_attention_2`` (GPU).
    """
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {list(DTYPES)}")
    path = resolve_model_path(model_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _load_error(model_path, e) from None
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        raise UserError(
            f"'{model_path}' is a '{getattr(config, 'model_type', '?')}' model; grounding fine-tuning supports "
            "Qwen2.5-VL checkpoints (model_type 'qwen2_5_vl', e.g. Qwen/Qwen2.5-VL-3B-Instruct)"
        )
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise _load_error(model_path, e) from None
    log.info(
        "loaded %s (%.1fM params, %s, attention %s)",
        model_path,
        sum(p.numel() for p in model.parameters()) / 1e6,
        next(model.parameters()).dtype,
        model.config._attn_implementation,
    )
    return model


def component_of(name: str) -> str:
    """The component (``vision``, ``merger``, ``llm``) of a ``Qwen2_5_VLForConditionalGeneration`` parameter."""
    if name.startswith("model.visual.merger.") or ".visual.merger." in name:
        return "merger"
    if name.startswith("model.visual.") or ".visual." in name:
        return "vision"
    if name.startswith(("model.language_model.", "lm_head.")) or ".language_model." in name:
        return "llm"
    raise ValueError(f"parameter '{name}' belongs to no known Qwen2.5-VL component")


def component_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{component: [(name, parameter), ...]}`` for every parameter of a Qwen2.5-VL model."""
    out: dict[str, list[tuple[str, nn.Parameter]]] = {c: [] for c in VLM_COMPONENTS}
    for n, p in model.named_parameters():
        out[component_of(n)].append((n, p))
    return out


def lora_target_regex(target_modules: list[str]) -> str:
    """A peft ``target_modules`` regex selecting the given linear-layer names inside the LLM only (the vision
    tower has ``qkv``/``proj``/MLP names of its own, which LoRA leaves alone)."""
    names = "|".join(sorted(set(target_modules)))
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"
