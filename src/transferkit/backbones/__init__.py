"""Backbones: one interface (:class:`Backbone`) over HF vision models, timm models and language models."""

from transferkit.backbones.base import Backbone, BackboneInfo
from transferkit.backbones.registry import (
    BackboneConfig,
    build_backbone,
    build_backbone_from_config,
    register_backbone,
    registered_backbones,
)

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneInfo",
    "build_backbone",
    "build_backbone_from_config",
    "register_backbone",
    "registered_backbones",
]
