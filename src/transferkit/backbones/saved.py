"""Backbones saved by transferkit runs (e.g. a DINO continuation), loadable wherever a backbone name goes.

A saved backbone is a directory holding

- ``model.safetensors``: the backbone's ``state_dict`` (safetensors, written with ``safetensors.torch.save_model``
  so tied tensors are handled);
- ``transferkit_backbone.json``: the :class:`~transferkit.backbones.registry.BackboneConfig` that builds the
  architecture, the image size it was built at, its :class:`~transferkit.backbones.base.BackboneInfo` and
  free-form provenance (``source``).

``build_backbone("runs/dino/backbone")`` rebuilds the architecture from the stored config (random init, no
download of the original weights) at the stored image size, so every parameter shape matches, then loads the
weights strictly. Other input sizes still work at run time (timm ViTs are built with ``dynamic_img_size``, HF
vision models interpolate their position embeddings, language backbones take any multiple of the patch size).
``pretrained=False`` (or a ``:random`` suffix) gives the random-init twin of the saved architecture.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transferkit.backbones.base import Backbone
from transferkit.backbones.registry import BackboneConfig
from transferkit.errors import UserError
from transferkit.utils.io import atomic_write_text

log = logging.getLogger(__name__)

META_FILE = "transferkit_backbone.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def is_saved_backbone(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save_backbone`."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / META_FILE).is_file()


def save_backbone(
    backbone: Backbone,
    config: Any,
    directory: str | Path,
    *,
    image_size: int,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``backbone``'s weights and the ``config`` (a ``BackboneConfig``) that builds it into ``directory``.

    ``image_size`` is the size the architecture was built at (position-embedding shapes depend on it).
    Returns the directory. Both files are written atomically (weights first, the JSON that marks the folder
    as a saved backbone last).
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config if isinstance(config, BackboneConfig) else BackboneConfig(**dict(config))
    tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_model(backbone, str(tmp), metadata={"format": "pt", "transferkit": str(FORMAT_VERSION)})
    tmp.replace(directory / WEIGHTS_FILE)
    info = asdict(backbone.info())
    meta = {
        "format": "transferkit-backbone",
        "version": FORMAT_VERSION,
        "backbone": asdict(cfg),
        "image_size": int(image_size),
        "info": info,
        "source": source or {},
    }
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
    return directory


def read_saved_meta(path: str | Path) -> dict[str, Any]:
    """The parsed ``transferkit_backbone.json`` of a saved-backbone directory."""
    p = Path(path).expanduser()
    try:
        meta = json.loads((p / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {p / META_FILE} ({e}); re-save the backbone or fix the file") from None
    if meta.get("format") != "transferkit-backbone" or "backbone" not in meta:
        raise UserError(f"{p / META_FILE} is not a transferkit backbone description")
    if not (p / WEIGHTS_FILE).is_file():
        raise UserError(
            f"saved backbone '{p}' has no {WEIGHTS_FILE}; the save was interrupted, save it again"
        )
    return meta
