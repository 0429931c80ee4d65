"""Backbones: one interface (:class:`Backbone`) over HF vision models, timm models and language models.

Importing the package registers every adapter's backbones (:mod:`transferkit.backbones.build` imports them).
"""

from transferkit.backbones.base import Backbone, BackboneInfo
from transferkit.backbones.build import (
    backbone_family,
    backbone_options,
    build_backbone,
    build_backbone_from_config,
    registered_backbones,
    resolve_backbone,
    seeded,
)
from transferkit.backbones.registry import BackboneConfig, register_backbone
from transferkit.backbones.saved import save_backbone

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
