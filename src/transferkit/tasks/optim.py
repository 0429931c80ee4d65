"""Optimiser construction in one tested place: param groups, LR scaling, layer decay, schedules.

Param groups follow what the backbone declares (DESIGN.md, convention 2):

- no weight decay on 1-D parameters (norms, biases) and on the names in ``Backbone.no_weight_decay()``;
- layer-wise LR decay from ``Backbone.layer_groups()``: with G groups, group g gets
  ``layer_decay ** (G - 1 - g)`` (the input embedding smallest, the last group 1), the head 1 — the
  BEiT/MAE/timm rule;
- per-component LR multipliers: ``patch_embed`` (group 0, the input embedding), ``backbone`` (the other
  groups) and ``head`` (every parameter outside the backbone).

The optimiser itself comes from timm's factory (``sgd``, ``adamw``, ``lars``, ``lamb``, ...), so every
optimiser timm knows is available by name, and the schedule from transformers (linear warmup, then cosine to
``min_lr`` or constant), stepped every optimiser step.
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        k = "model.optimizer"
        for name in ("blr", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"{k}.{name} must be > 0, got {value}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserError(f"{k}.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"{k}.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"{k}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"{k}.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup_epochs is not None and not self.warmup_epochs >= 0:
            raise UserError(f"{k}.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.min_lr <= 1:
            raise UserError(f"{k}.min_lr is a fraction of the peak LR in [0, 1], got {self.min_lr}")
        if self.scheduler not in ("cosine", "constant"):
            raise UserError(f"{k}.scheduler must be 'cosine' or 'constant', got '{self.scheduler}'")
        bad = {c: m for c, m in self.lr_mult.items() if not m > 0}
        if bad:
            raise UserError(f"{k}.lr_mult values must be > 0, got {bad}")


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
        raise UserError(
            f"unknown model.optimizer.lr_mult component(s) {sorted(unknown)}; use {list(COMPONENTS)}"
        )
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


def param_groups(
    named: Iterable[tuple[str, nn.Parameter, str, int, float]],
    *,
    lr: float,
    weight_decay: float,
    no_decay: set[str] = frozenset(),
) -> list[dict]:
    """The one param-group builder: ``named`` holds ``(name, parameter, component, layer_id, lr_scale)``; only
    parameters with ``requires_grad`` enter. One group per (component, layer, decay or not): 1-D parameters and
    ``no_decay`` names get no weight decay. Each group carries ``lr`` (``lr * lr_scale``), ``weight_decay``, and
    the bookkeeping keys ``lr_scale``, ``component``, ``layer_id``, ``name`` and ``param_names``."""
    buckets: dict[tuple[str, int, bool], dict] = {}
    for name, p, component, layer_id, scale in named:
        if not p.requires_grad:
            continue
        nd = p.ndim <= 1 or name in no_decay
        key = (component, layer_id, nd)
        if key not in buckets:
            buckets[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": 0.0 if nd else weight_decay,
                "lr_scale": scale,
                "component": component,
                "layer_id": layer_id,
                "name": f"{component}/layer{layer_id}/{'no_decay' if nd else 'decay'}",
            }
        buckets[key]["params"].append(p)
        buckets[key]["param_names"].append(name)
    if not buckets:
        raise UserError("nothing to train: every parameter is frozen")
    return sorted(buckets.values(), key=lambda g: (g["layer_id"], g["component"], g["name"]))


def build_param_groups(
    backbone: Backbone,
    head: nn.Module | Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    lr_mult: dict[str, float] | None = None,
) -> list[dict]:
    """:func:`param_groups` of ``backbone`` + ``head``: layer decay from the backbone's ``layer_groups()``
    (group g of G gets ``layer_decay ** (G - 1 - g)``), components ``patch_embed`` (group 0), ``backbone``
    and ``head``, no weight decay on the backbone's ``no_weight_decay()`` names."""
    lr_mult = {**dict.fromkeys(COMPONENTS, 1.0), **(lr_mult or {})}
    ids, num_groups = layer_ids(backbone)
    named = []
    for n, p in backbone.named_parameters():
        g = ids[n]
        component = "patch_embed" if g == 0 else "backbone"
        named.append(
            (f"backbone.{n}", p, component, g, layer_decay ** (num_groups - 1 - g) * lr_mult[component])
        )
    head_params = head.named_parameters() if isinstance(head, nn.Module) else head
    named += [(f"head.{n}", p, "head", num_groups, lr_mult["head"]) for n, p in head_params]
    no_decay = {f"backbone.{n}" for n in backbone.no_weight_decay()}
    return param_groups(named, lr=lr, weight_decay=weight_decay, no_decay=no_decay)


def backbone_head_param_groups(
    backbone: Backbone, head: nn.Module | Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig, *, lr: float
) -> list[dict]:
    """:func:`build_param_groups` with ``cfg``'s weight decay, layer decay and LR multipliers."""
    return build_param_groups(
        backbone, head, lr=lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay, lr_mult=cfg.lr_mult
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


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup over ``warmup_epochs``, then cosine to ``min_lr`` x peak (or constant):
    transformers' schedules, which scale each group's own LR, so layer/component ratios hold."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    warmup = round((cfg.warmup_epochs or 0.0) * steps_per_epoch)
    if cfg.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, min_lr_rate=cfg.min_lr
    )
