"""Backbone registry: built-in names, timm names, Hugging Face hub ids and local directories.

Name forms accepted by :func:`build_backbone`:

- a registered name (``minilm-l6``, ``vit-tiny``, ``gpt2-tiny`` ...; see ``transferkit backbones``);
- ``timm:<model>`` or any bare timm model name (``resnet18``, ``vit_small_patch16_224.augreg_in21k``);
- ``hf:<hub id>`` or a hub id with a slash (``facebook/dinov2-small``, ``openai-community/gpt2``);
- a local directory written by ``save_pretrained`` (its ``config.json`` decides the family);
- a directory written by :func:`transferkit.backbones.saved.save_backbone` (e.g. ``runs/<name>/backbone``).

A ``:random`` suffix on any of these builds the random-init twin (same architecture, no pretrained weights).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.backbones.base import Backbone
from transferkit.errors import UnknownBackboneError, UserError

log = logging.getLogger(__name__)

Factory = Callable[..., Backbone]


@dataclass
class RegistryEntry:
    name: str
    factory: Factory
    family: str
    description: str
    #: True when the pretrained weights are available offline (packaged or random-init tiny configs).
    offline: bool


_REGISTRY: dict[str, RegistryEntry] = {}


def register_backbone(name: str, *, family: str, description: str = "", offline: bool = False):
    """Decorator registering ``factory(pretrained: bool, **options) -> Backbone`` under ``name``."""

    def deco(fn: Factory) -> Factory:
        key = name.lower()
        if key in _REGISTRY:
            raise RuntimeError(f"backbone '{name}' registered twice")
        _REGISTRY[key] = RegistryEntry(name, fn, family, description or (fn.__doc__ or "").strip(), offline)
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the adapter modules runs their @register_backbone decorators.
    from transferkit.backbones import hf_vision, language, timm_vision  # noqa: F401


def registered_backbones() -> dict[str, RegistryEntry]:
    _ensure_loaded()
    return dict(_REGISTRY)


@dataclass
class BackboneConfig:
    """How to build a backbone; the ``model.backbone`` section of every config.

    Args:
        name: registered name, ``timm:<model>``, hub id or local dir (``:random`` suffix = random init).
        pretrained: load pretrained weights (False = random-init twin, the control).
        pooling: ``cls``, ``mean``, ``last`` or ``cls+mean``; None = the adapter's default.
        patch_size: patch size of the PatchEmbed of language-model backbones.
        drop_path_rate: stochastic depth rate, where the backbone supports it.
        keep_position_embeddings: language models: keep the LM's own position information.
        grad_checkpointing: recompute block activations in backward to save memory.
        options: extra keyword arguments passed to the adapter.
    """

    name: str = "minilm-l6"
    pretrained: bool = True
    pooling: str | None = None
    patch_size: int | None = None
    drop_path_rate: float = 0.0
    keep_position_embeddings: bool = True
    grad_checkpointing: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def split_random_suffix(name: str) -> tuple[str, bool]:
    """``'minilm-l6:random'`` -> ``('minilm-l6', True)``."""
    if name.endswith(":random"):
        return name[: -len(":random")], True
    return name, False


def build_backbone(
    name: str,
    pretrained: bool = True,
    *,
    image_size: int = 224,
    pooling: str | None = None,
    patch_size: int | None = None,
    drop_path_rate: float = 0.0,
    keep_position_embeddings: bool = True,
    grad_checkpointing: bool = False,
    **options: Any,
) -> Backbone:
    """Build a backbone by name (see module docstring for the accepted forms)."""
    from transferkit.backbones.saved import is_saved_backbone, load_saved_backbone

    _ensure_loaded()
    base, random_suffix = split_random_suffix(name.strip())
    pretrained = pretrained and not random_suffix
    common = dict(
        image_size=image_size,
        pooling=pooling,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        keep_position_embeddings=keep_position_embeddings,
        **options,
    )
    entry = _REGISTRY.get(base.lower())
    if entry is not None:
        model = entry.factory(pretrained=pretrained, **common)
    elif base.startswith("timm:"):
        from transferkit.backbones.timm_vision import build_timm

        model = build_timm(base[len("timm:") :], pretrained=pretrained, **common)
    elif is_saved_backbone(base):  # a directory written by save_backbone (e.g. runs/<name>/backbone)
        model = load_saved_backbone(base, pretrained=pretrained, **common)
    elif base.startswith("hf:") or Path(base).expanduser().is_dir() or "/" in base:
        model = _build_hf(base.removeprefix("hf:"), pretrained=pretrained, **common)
    elif _is_timm_model(base):
        from transferkit.backbones.timm_vision import build_timm

        model = build_timm(base, pretrained=pretrained, **common)
    else:
        raise UnknownBackboneError(
            f"unknown backbone '{name}'; known: {', '.join(sorted(_REGISTRY))}; "
            "or use a timm model name (timm:<name>), a Hugging Face hub id (org/name) or a local directory "
            "saved with save_pretrained"
        )
    model.name = name
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_backbone_from_config(cfg: BackboneConfig, image_size: int) -> Backbone:
    return build_backbone(
        cfg.name,
        cfg.pretrained,
        image_size=image_size,
        pooling=cfg.pooling,
        patch_size=cfg.patch_size,
        drop_path_rate=cfg.drop_path_rate,
        keep_position_embeddings=cfg.keep_position_embeddings,
        grad_checkpointing=cfg.grad_checkpointing,
        **cfg.options,
    )


def _is_timm_model(name: str) -> bool:
    import timm

    arch = name.split(".")[0]
    return bool(timm.is_model(arch))


def read_hf_model_type(path_or_id: str) -> str:
    """The ``model_type`` of a hub id or local dir, via the real ``AutoConfig.from_pretrained`` path."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            raise UserError(
                f"directory '{path_or_id}' has no config.json; point at a folder written by "
                "save_pretrained (or a hub id such as facebook/dinov2-small)"
            )
        return json.loads(cfg_file.read_text()).get("model_type", "")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path_or_id).model_type
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load the config of '{path_or_id}' from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); check the id, or when offline pass a local directory saved with "
            "save_pretrained"
        ) from None


def _build_hf(path_or_id: str, pretrained: bool, **common: Any) -> Backbone:
    from transferkit.backbones import hf_vision, language

    model_type = read_hf_model_type(path_or_id)
    if model_type in hf_vision.SUPPORTED_MODEL_TYPES:
        return hf_vision.build_hf_vision(path_or_id, pretrained=pretrained, **common)
    if model_type in language.SUPPORTED_MODEL_TYPES or language.is_text_model_type(model_type):
        return language.build_language(path_or_id, pretrained=pretrained, **common)
    raise UserError(
        f"'{path_or_id}' is a '{model_type}' model, which transferkit cannot use as an image encoder; "
        f"supported vision types: {sorted(hf_vision.SUPPORTED_MODEL_TYPES)}, "
        f"language types: {sorted(language.SUPPORTED_MODEL_TYPES)}"
    )
