"""Backbones: one interface (:class:`Backbone`) over HF vision models, timm models and language models.

Names load on first use; :mod:`transferkit.backbones.build` imports every adapter, which registers its backbones.
"""

import importlib
from typing import Any

#: public names and their modules, imported on first use (building a backbone imports every adapter, which
#: registers their names; ``transferkit.backbones.poolings`` stays torch-free)
_LAZY = {
    **{n: "base" for n in ("Backbone", "BackboneInfo")},
    **{
        n: "build"
        for n in (
            "backbone_family",
            "backbone_options",
            "build_backbone",
            "build_backbone_from_config",
            "registered_backbones",
            "resolve_backbone",
            "seeded",
        )
    },  # fmt: skip
    **{n: "registry" for n in ("BackboneConfig", "register_backbone")},
    "save_backbone": "saved",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"transferkit.backbones.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'transferkit.backbones' has no attribute '{name}'")


__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneInfo",
    "backbone_family",
    "backbone_options",
    "build_backbone",
    "build_backbone_from_config",
    "register_backbone",
    "registered_backbones",
    "resolve_backbone",
    "save_backbone",
    "seeded",
]
