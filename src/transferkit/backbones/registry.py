"""The backbone registry: registered names (``@register_backbone``) and :class:`BackboneConfig`.

Adapters register their factories here; :mod:`transferkit.backbones.build` turns a name into a backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transferkit.backbones.base import Backbone
from transferkit.errors import UserError

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
        seed: seed of the parts built at random (a random-init twin, a language model's new PatchEmbed): the
            same config rebuilds the same starting weights (checkpoints without frozen weights, analysis
            against the start, compare's twins).
    """

    name: str = "minilm-l6"
    pretrained: bool = True
    pooling: str | None = None
    patch_size: int | None = None
    drop_path_rate: float = 0.0
    keep_position_embeddings: bool = True
    grad_checkpointing: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        k = "model.backbone"
        if not str(self.name).strip():
            raise UserError(f"{k}.name is empty; give a registered name, a timm name, a hub id or a folder")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise UserError(f"{k}.drop_path_rate is a probability in [0, 1), got {self.drop_path_rate}")
        if self.patch_size is not None and self.patch_size < 1:
            raise UserError(f"{k}.patch_size must be >= 1, got {self.patch_size}")


def split_random_suffix(name: str) -> tuple[str, bool]:
    """``'minilm-l6:random'`` -> ``('minilm-l6', True)``."""
    if name.endswith(":random"):
        return name[: -len(":random")], True
    return name, False


def registry_entries() -> dict[str, RegistryEntry]:
    """The registered entries by lower-case name (importing :mod:`transferkit.backbones` registers them all)."""
    return dict(_REGISTRY)
