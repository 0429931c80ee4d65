"""Backbones: one interface (:class:`Backbone`) over HF vision models, timm models and language models.

Names load on first use; :mod:`transferkit.backbones.build` imports every adapter, which registers its backbones.
"""

from transferkit.utils.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _LAZY)


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
