"""The HF-format artifact as a transformers model: ``AutoModel.from_pretrained(dir, trust_remote_code=True)``.

An exported directory holds ``config.json`` (``model_type: transferkit``, the task class and its init arguments,
an ``auto_map``), ``model.safetensors`` (this model's ``state_dict``: the task module under ``task.``) and two
one-line files, ``configuration_transferkit.py`` and ``modeling_transferkit.py``, that import these classes, so
the Auto classes find them (transferkit must be installed). :func:`register_auto_classes` registers them instead,
for loading without ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from transferkit.errors import UserError


class TransferkitConfig(PretrainedConfig):
    """``config.json`` of an HF-format artifact: which task module, built how, with which outputs."""

    model_type = "transferkit"

    def __init__(
        self,
        task_class: str = "",
        init_args: dict[str, Any] | None = None,
        backbone_dir: str | None = None,
        backbone_normalization: dict[str, list[float]] | None = None,
        output_names: list[str] | None = None,
        transferkit_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.task_class = task_class
        self.init_args = dict(init_args or {})
        self.backbone_dir = backbone_dir
        self.backbone_normalization = backbone_normalization
        self.output_names = list(output_names or [])
        self.transferkit_version = transferkit_version
        super().__init__(**kwargs)


class TransferkitModel(PreTrainedModel):
    """A transferkit task module as a ``PreTrainedModel``: ``pixel_values (B, 3, S, S)`` RGB in [0, 1] (resized
    as ``preprocessor_config.json`` says; the model normalises) -> ``{output name: tensor}``, e.g.
    ``{"logits": (B, C)}``."""

    config_class = TransferkitConfig
    main_input_name = "pixel_values"

    def __init__(self, config: TransferkitConfig, directory: str | Path | None = None) -> None:
        super().__init__(config)
        where = directory or getattr(config, "name_or_path", None) or None
        self.task = build_task_module(config.to_dict(), Path(where) if where else None)
        self.output_names = list(config.output_names)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from ``model.safetensors``; what it cannot hold, a backbone's normalisation statistics
        (non-persistent buffers ``from_pretrained`` leaves uninitialised), is set from the backbone's own."""
        from transferkit.backbones.base import Backbone

        if isinstance(module, Backbone):
            module.reset_normalization()

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.task(pixel_values)
        if isinstance(out, torch.Tensor):
            return {self.output_names[0] if self.output_names else "logits": out}
        return {k: out[k] for k in self.output_names}


def import_object(path: str) -> Any:
    """``'package.module.Name'`` -> the object."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot import '{path}' ({e}); is the package that defines it installed?") from None


def build_task_module(config: dict[str, Any], directory: Path | None = None) -> torch.nn.Module:
    """Rebuild a task module (random init) from an HF-format ``config.json``; weights are loaded separately."""
    cls = import_object(config["task_class"])
    init_args = json.loads(json.dumps(config["init_args"]))
    backbone_dir = config.get("backbone_dir")
    if backbone_dir and directory is not None and isinstance(init_args.get("backbone"), dict):
        init_args["backbone"]["name"] = str(directory / backbone_dir)
    module = cls(**init_args)
    from transferkit.tasks.protocol import (
        check_task,  # only the HF format rebuilds a task (the server stays light)
    )

    module.configure_model()  # builds the layers once; a no-op for a task built in __init__
    backbone = check_task(module).image_backbone()
    stats = config.get("backbone_normalization")
    if backbone is not None and stats:  # non-persistent buffers: restore the statistics the run used
        backbone.reset_normalization(stats["mean"], stats["std"])
    return module.eval()


def register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel`` know ``model_type: transferkit`` in this process."""
    try:
        AutoConfig.register("transferkit", TransferkitConfig)
        AutoModel.register(TransferkitConfig, TransferkitModel)
    except ValueError:  # registered already
        pass


#: the files written next to config.json so that trust_remote_code finds the classes
REMOTE_CODE = {
    "configuration_transferkit.py": "from transferkit.deploy.hf_model import TransferkitConfig  # noqa: F401\n",
    "modeling_transferkit.py": "from transferkit.deploy.hf_model import TransferkitConfig, TransferkitModel  # noqa: F401\n",
}
AUTO_MAP = {
    "AutoConfig": "configuration_transferkit.TransferkitConfig",
    "AutoModel": "modeling_transferkit.TransferkitModel",
}
