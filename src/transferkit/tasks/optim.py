"""Optimiser construction in one tested place: param groups, LR scaling, layer decay, schedules.

Param groups follow what the backbone declares (DESIGN.md, convention 2):

- no weight decay on 1-D parameters (norms, biases) and on the names in ``Backbone.no_weight_decay()``;
- layer-wise LR decay from ``Backbone.layer_groups()``: with G groups, group g gets
  ``layer_decay ** (G - 1 - g)`` (the input embedding smallest, the last group 1), the head 1 — the
  BEiT/MAE/timm rule;
- per-component LR multipliers: ``patch_embed`` (group 0, the input embedding), ``backbone`` (the other
  groups) and ``head`` (every parameter outside the backbone).

The optimiser itself comes from timm's factory (``sgd``, ``adamw``, ``lars``, ``lamb``, ...), so every
optimiser timm knows is available by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.errors import UserError

if TYPE_CHECKING:
    import lightning as L

COMPONENTS = ("patch_embed", "backbone", "head")


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``None`` fields take the adaptation's defaults (see ``ADAPTATION_DEFAULTS``).

    Args:
        name: any timm optimiser name: ``sgd``, ``adamw``, ``lars``, ``lamb``, ``lion``, ...
        blr: base learning rate; the actual LR is ``blr * effective_batch / 256`` (MAE/DINOv2 convention).
        lr: absolute learning rate; when set it overrides ``blr`` (no batch scaling).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay on >= 2-D parameters.
        momentum: SGD/LARS momentum.
        betas: Adam-family betas.
        layer_decay: layer-wise LR decay factor (1.0 = off; e.g. 0.75 for ViT-B fine-tuning).
        lr_mult: per-component LR multipliers: ``patch_embed``, ``backbone``, ``head``.
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        scheduler: ``cosine`` (to ``min_lr``) or ``constant`` after warmup.
        min_lr: final LR of the cosine schedule, as a fraction of the peak LR.
    """

    name: str | None = None
    blr: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float | None = None
    lr_mult: dict[str, float] = field(default_factory=dict)
    warmup_epochs: float | None = None
    scheduler: str = "cosine"
    min_lr: float = 0.0


#: Defaults per adaptation paradigm (MAE/DINOv2 recipes, scaled down to small data).
ADAPTATION_DEFAULTS: dict[str, dict] = {
    "linear_probe": dict(name="sgd", blr=0.1, weight_decay=0.0, layer_decay=1.0, warmup_epochs=0.0),
    "finetune": dict(name="adamw", blr=1e-3, weight_decay=0.05, layer_decay=0.75, warmup_epochs=1.0),
    "lora": dict(name="adamw", blr=1e-3, weight_decay=0.0, layer_decay=1.0, warmup_epochs=1.0),
}


def resolve_optim_config(cfg: OptimConfig, adaptation: str) -> OptimConfig:
    """Fill ``None`` fields from the adaptation's defaults."""
    if adaptation not in ADAPTATION_DEFAULTS:
        raise UserError(f"unknown adaptation '{adaptation}'; choose one of {list(ADAPTATION_DEFAULTS)}")
    defaults = ADAPTATION_DEFAULTS[adaptation]
    values = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else defaults.get(k)) for k in defaults}
    unknown = set(cfg.lr_mult) - set(COMPONENTS)
    if unknown:
        raise UserError(f"unknown lr_mult component(s) {sorted(unknown)}; use {list(COMPONENTS)}")
    if cfg.scheduler not in ("cosine", "constant"):
        raise UserError(f"unknown scheduler '{cfg.scheduler}'; use 'cosine' or 'constant'")
    return OptimConfig(**{**cfg.__dict__, **values})


def scaled_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """``lr`` if given, else ``blr * effective_batch / 256``."""
    if cfg.lr is not None:
        return float(cfg.lr)
    assert cfg.blr is not None, "resolve_optim_config first"
    return float(cfg.blr) * effective_batch / 256


def effective_batch_size(trainer: L.Trainer, *, fallback: int | None = None) -> int:
    """Samples per optimiser step: ``trainer.datamodule.batch_size`` x gradient accumulation x world size.

    A datamodule without ``batch_size`` is a UserError, unless ``fallback`` stands in for it.
    """
    batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if batch is None:
        if fallback is None:
            raise UserError("cannot scale the LR: the datamodule has no batch_size; set model.optimizer.lr")
        batch = fallback
    return int(batch) * trainer.accumulate_grad_batches * trainer.world_size


def _strip_module_path(name: str) -> list[str]:
    return name.split(".")[:-1]


def layer_ids(backbone: Backbone) -> tuple[dict[str, int], int]:
    """Map every backbone parameter name to its layer-group index; also return the number of groups.

    Parameters that ``layer_groups()`` does not list (e.g. LoRA matrices injected later) take the group of the
    listed parameter sharing the longest module path with them.
    """
    groups = backbone.layer_groups()
    ids = {n: g for g, names in enumerate(groups) for n in names}
    modules: dict[tuple[str, ...], int] = {}
    for n, g in ids.items():
        modules.setdefault(tuple(_strip_module_path(n)), g)
    for n, _ in backbone.named_parameters():
        if n in ids:
            continue
        path = _strip_module_path(n)
        while path and tuple(path) not in modules:
            path.pop()
        if not path:
            # no listed ancestor: the parameter sits after the blocks (or is a stray top-level tensor)
            ids[n] = len(groups) - 1
            continue
        ids[n] = modules[tuple(path)]
    return ids, len(groups)


def build_param_groups(
    backbone: Backbone,
    head: nn.Module | Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    lr_mult: dict[str, float] | None = None,
) -> list[dict]:
    """Param groups for ``backbone`` + ``head`` (only parameters with ``requires_grad``).

    Each group carries ``lr``, ``weight_decay``, and bookkeeping keys ``lr_scale`` (layer decay x component
    multiplier), ``component``, ``layer_id`` and ``name`` so schedules and tests can inspect it.
    """
    lr_mult = {**dict.fromkeys(COMPONENTS, 1.0), **(lr_mult or {})}
    ids, num_groups = layer_ids(backbone)
    skip = set(backbone.no_weight_decay())
    buckets: dict[tuple[str, int, bool], dict] = {}

    def add(name: str, p: nn.Parameter, component: str, layer_id: int, scale: float, no_decay: bool) -> None:
        key = (component, layer_id, no_decay)
        if key not in buckets:
            buckets[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "component": component,
                "layer_id": layer_id,
                "name": f"{component}/layer{layer_id}/{'no_decay' if no_decay else 'decay'}",
            }
        buckets[key]["params"].append(p)
        buckets[key]["param_names"].append(name)

    for n, p in backbone.named_parameters():
        if not p.requires_grad:
            continue
        g = ids[n]
        component = "patch_embed" if g == 0 else "backbone"
        scale = layer_decay ** (num_groups - 1 - g) * lr_mult[component]
        add(f"backbone.{n}", p, component, g, scale, p.ndim <= 1 or n in skip)
    head_params = head.named_parameters() if isinstance(head, nn.Module) else head
    for n, p in head_params:
        if p.requires_grad:
            add(f"head.{n}", p, "head", num_groups, lr_mult["head"], p.ndim <= 1)
    if not buckets:
        raise UserError("nothing to train: every parameter is frozen")
    return sorted(buckets.values(), key=lambda g: (g["layer_id"], g["component"], g["name"]))


def backbone_head_param_groups(
    backbone: Backbone, head: nn.Module | Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig, *, lr: float
) -> list[dict]:
    """:func:`build_param_groups` with ``cfg``'s weight decay, layer decay and LR multipliers."""
    return build_param_groups(
        backbone,
        head,
        lr=lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        lr_mult=cfg.lr_mult,
    )


def create_optimizer(param_groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimiser by timm name over prepared param groups (their own lr / weight_decay win)."""
    from timm.optim import create_optimizer_v2, list_optimizers

    name = (cfg.name or "").lower()
    if name not in list_optimizers():
        raise UserError(f"unknown optimizer '{cfg.name}'; timm knows: {', '.join(list_optimizers())}")
    kwargs = {"betas": tuple(cfg.betas)} if name in ("adamw", "adam", "nadamw", "lamb") else {}
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in param_groups]
    return create_optimizer_v2(
        groups, opt=name, lr=groups[0]["lr"], weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )


def training_steps(trainer: L.Trainer) -> tuple[int, int]:
    """``(total optimiser steps, steps per epoch)`` of ``trainer``'s fit (Lightning's estimate), both >= 1."""
    total = max(1, int(trainer.estimated_stepping_batches))
    epochs = max(1, trainer.max_epochs or 1)
    return total, max(1, total // epochs)


def lightning_optimizers(param_groups: list[dict], cfg: OptimConfig, trainer: L.Trainer) -> dict:
    """What ``LightningModule.configure_optimizers`` returns: ``{"optimizer", "lr_scheduler"}`` with the
    optimiser over ``param_groups`` and the warmup + cosine schedule stepped every optimiser step."""
    optimizer = create_optimizer(param_groups, cfg)
    total, steps_per_epoch = training_steps(trainer)
    scheduler = create_scheduler(optimizer, cfg, total_steps=total, steps_per_epoch=steps_per_epoch)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float, cosine: bool) -> float:
    """LR multiplier at ``step``: linear warmup to 1, then cosine to ``min_ratio`` (or constant 1)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warmup + cosine; LambdaLR multiplies each group's own LR, so layer/component ratios hold."""
    warmup = round((cfg.warmup_epochs or 0.0) * steps_per_epoch)

    def fn(step: int) -> float:
        return warmup_cosine(
            step,
            warmup_steps=warmup,
            total_steps=total_steps,
            min_ratio=cfg.min_lr,
            cosine=cfg.scheduler == "cosine",
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
