"""Building backbones: built-in names, timm names, Hugging Face hub ids and local directories.

Name forms accepted by :func:`build_backbone`:

- a registered name (``minilm-l6``, ``vit-tiny``, ``gpt2-tiny`` ...; see ``transferkit backbones``);
- ``timm:<model>`` or any bare timm model name (``resnet18``, ``vit_small_patch16_224.augreg_in21k``);
- ``hf:<hub id>`` or a hub id with a slash (``facebook/dinov2-small``, ``openai-community/gpt2``);
- a local directory written by ``save_pretrained`` (its ``config.json`` decides the family);
- a directory written by :func:`transferkit.backbones.saved.save_backbone` (e.g. ``runs/<name>/backbone``).

A ``:random`` suffix on any of these builds the random-init twin (same architecture, no pretrained weights);
:func:`resolve_backbone` builds random-init parts under a fixed seed, so a twin is one reproducible model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from transferkit.backbones import (
    efficientnet_lite,  # noqa: F401  (registers its names)
    hf_vision,
    language,
    timm_vision,
)
from transferkit.backbones.base import Backbone
from transferkit.backbones.registry import (
    BackboneConfig,
    RegistryEntry,
    registry_entries,
    split_random_suffix,
)
from transferkit.backbones.saved import WEIGHTS_FILE, is_saved_backbone, read_saved_meta
from transferkit.errors import UnknownBackboneError, UserError

log = logging.getLogger(__name__)


def backbone_family(name: str) -> str:
    """The family ``name`` builds (``language``, ``hf_vision``, ``timm``, ...), read without building it: the
    registry entry, a saved backbone's description, or the ``model_type`` of a hub id / local directory."""
    base, _ = split_random_suffix(name.strip())
    entry = registry_entries().get(base.lower())
    if entry is not None:
        return entry.family
    if base.startswith("timm:"):
        return "timm"
    if is_saved_backbone(base):
        return backbone_family(str(read_saved_meta(base)["backbone"]["name"]))
    if base.startswith("hf:") or Path(base).expanduser().is_dir() or "/" in base:
        model_type = read_hf_model_type(base.removeprefix("hf:"))
        text = model_type in language.SUPPORTED_MODEL_TYPES or language.is_text_model_type(model_type)
        return "language" if text else "hf_vision"
    return "timm"


def backbone_options(names: list[str], patch_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Build options per backbone of a comparison: ``patch_size`` goes to the language-model backbones among
    ``names`` (vision backbones have their own); given when none of them is one, it is an error."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    if patch_size is None:
        return out
    language_names = [n for n in names if backbone_family(n) == "language"]
    if not language_names:
        raise UserError(
            f"--patch_size applies to language-model backbones, and none of {names} is one: remove --patch_size"
        )
    for n in language_names:
        out[n]["patch_size"] = int(patch_size)
    return out


def registered_backbones() -> dict[str, RegistryEntry]:
    """Every registered backbone (the adapters' ``@register_backbone`` ran when this module was imported)."""
    return registry_entries()


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
    entry = registry_entries().get(base.lower())
    if entry is not None:
        model = entry.factory(pretrained=pretrained, **common)
    elif base.startswith("timm:"):
        model = timm_vision.build_timm(base[len("timm:") :], pretrained=pretrained, **common)
    elif is_saved_backbone(base):  # a directory written by save_backbone (e.g. runs/<name>/backbone)
        model = load_saved_backbone(base, pretrained=pretrained, **common)
    elif base.startswith("hf:") or Path(base).expanduser().is_dir() or "/" in base:
        model = _build_hf(base.removeprefix("hf:"), pretrained=pretrained, **common)
    elif _is_timm_model(base):
        model = timm_vision.build_timm(base, pretrained=pretrained, **common)
    else:
        raise UnknownBackboneError(
            f"unknown backbone '{name}'; known: {', '.join(sorted(registry_entries()))}; "
            "or use a timm model name (timm:<name>), a Hugging Face hub id (org/name) or a local directory "
            "saved with save_pretrained"
        )
    model.name = name
    model.fixed_parameter_names()  # remembered now, before a task's freezing or LoRA changes requires_grad
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_backbone_from_config(cfg: BackboneConfig, image_size: int) -> Backbone:
    """The backbone ``cfg`` describes, its random-init parts drawn under ``cfg.seed`` (the global RNG is left
    as it was): the same config always gives the same starting weights."""
    with seeded(cfg.seed):
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


def load_saved_backbone(
    path: str | Path,
    pretrained: bool = True,
    *,
    image_size: int = 224,
    pooling: str | None = None,
    patch_size: int | None = None,
    drop_path_rate: float = 0.0,
    keep_position_embeddings: bool = True,
    **options: Any,
) -> Backbone:
    """Rebuild a saved backbone (see the module docstring); ``pretrained=False`` skips loading the weights.

    ``pooling`` and ``drop_path_rate`` override the saved ones; ``patch_size``, ``keep_position_embeddings``
    and ``options`` must agree with the saved architecture (they shape it) and are taken from the save.
    """
    from safetensors.torch import load_model

    p = Path(path).expanduser()
    meta = read_saved_meta(p)
    known = {f.name for f in fields(BackboneConfig)}
    saved = BackboneConfig(**{k: v for k, v in meta["backbone"].items() if k in known})
    if patch_size is not None and saved.patch_size is not None and int(patch_size) != int(saved.patch_size):
        raise UserError(
            f"saved backbone '{p}' has patch_size {saved.patch_size}; drop patch_size={patch_size} (the weights "
            "fix the architecture)"
        )
    if options:
        log.info(
            "saved backbone '%s': using the saved build options %s (ignoring %s)", p, saved.options, options
        )
    built_size = int(meta.get("image_size") or image_size)
    if built_size != image_size:
        log.info(
            "saved backbone '%s' was built for %dpx images; building it at that size (its position embeddings "
            "are resampled at run time for %dpx inputs)",
            p,
            built_size,
            image_size,
        )
    # random init (no download of the original weights): every tensor comes from the save
    model = build_backbone(
        saved.name,
        False,
        image_size=built_size,
        pooling=pooling or saved.pooling,
        patch_size=saved.patch_size,
        drop_path_rate=drop_path_rate,
        keep_position_embeddings=saved.keep_position_embeddings,
        **saved.options,
    )
    if pretrained:
        try:
            missing, unexpected = load_model(model, str(p / WEIGHTS_FILE), strict=True)
        except RuntimeError as e:
            raise UserError(
                f"the weights in '{p / WEIGHTS_FILE}' do not fit the architecture '{saved.name}': "
                f"{str(e).splitlines()[0]}"
            ) from None
        assert not missing and not unexpected, (missing, unexpected)
    model.pretrained = bool(pretrained)
    model.input_size = int(image_size)
    model.source = str(p)
    return model


# ---------------------------------------------------------------------------------------------- seeded builds
@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with torch's CPU (and CUDA) RNG seeded, restoring the global RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_backbone(
    backbone: str | BackboneConfig | Backbone, image_size: int, *, seed: int | None = 0, **options: Any
) -> Backbone:
    """A built :class:`Backbone` from a name (``'minilm-l6'``, ``'vit-tiny:random'``, hub id...), a
    :class:`BackboneConfig` or an instance (returned as is). Random-init parts are seeded with ``seed``.

    ``options`` (e.g. ``patch_size=16``) are :class:`BackboneConfig` fields, used with a name only.
    """
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, str):
        backbone = BackboneConfig(name=backbone, **options)
    elif not isinstance(backbone, BackboneConfig):
        raise UserError(
            f"backbone must be a name, a BackboneConfig or a Backbone, got {type(backbone).__name__}"
        )
    if seed is not None:
        backbone = dataclasses.replace(backbone, seed=int(seed))
    return build_backbone_from_config(backbone, image_size=image_size)
