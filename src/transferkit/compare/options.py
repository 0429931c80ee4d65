"""Options of ``transferkit compare`` (the ``--probe.*``, ``--knn.*`` and ``--finetune.*`` groups), each
validated when built, so a wrong value fails before any feature is extracted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.backbones.poolings import POOLINGS
from transferkit.errors import UserError
from transferkit.probe.options import (
    DEFAULT_KS,
    DEFAULT_LEARNING_RATES,
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT_DECAYS,
    GRID_PRECISIONS,
)

#: a pretrained language model and a pretrained vision model, each beside its random-init twin
DEFAULT_BACKBONES = ("minilm-l6", "minilm-l6:random", "efficientnet-lite0", "efficientnet-lite0:random")


def parse_backbones(value: str | Sequence[str]) -> list[str]:
    """``'a,b , c'`` or ``['a', 'b,c']`` -> ``['a', 'b', 'c']``; a name given twice is an error."""
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if not names:
        raise UserError(
            "no backbones given: pass e.g. --backbones minilm-l6,minilm-l6:random,efficientnet-lite0,efficientnet-lite0:random"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--backbones names {', '.join(twice)} more than once; list each backbone once")
    return names


@dataclass
class ProbeOptions:
    """Linear-probe grid on cached features (DINOv2-style, see ``transferkit.probe.linear``).

    Args:
        epochs: passes over the cached training features.
        batch_size: mini-batch size (LRs are scaled by ``batch_size / 256``).
        learning_rates: base learning-rate grid.
        poolings: poolings to probe; None = the backbone's default pooling and ``mean``.
        layers: numbers of last blocks whose pooled features are concatenated (1 = the final block); values
            above a backbone's depth are capped.
        weight_decays: L2 weight decays searched with the learning rates (one head per pair).
        normalize: standardise features with the training mean/std (BN(affine=False)-style).
        logreg: also the logistic-regression protocol (DINOv2's ``log_regression``: L-BFGS, C = 10 ** p over 45
            powers from -6 to 5, swept on train, chosen on val) on the feature variant the grid chose on val.
        precision: the grid's training matmuls: ``auto`` (bfloat16 where the device runs it fast, as
            ``--precision``; else float32), ``float32`` or ``bfloat16``; weights, loss and evaluation stay float32.
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rates: list[float] = field(default_factory=lambda: list(DEFAULT_LEARNING_RATES))
    poolings: list[str] | None = None
    layers: list[int] = field(default_factory=lambda: [1, 4])
    weight_decays: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    normalize: bool = True
    logreg: bool = True
    precision: str = "auto"

    def __post_init__(self) -> None:
        _at_least("probe.epochs", self.epochs, 1)
        if self.precision not in GRID_PRECISIONS:
            raise UserError(
                f"unknown probe.precision '{self.precision}'; choose one of {list(GRID_PRECISIONS)}"
            )
        _at_least("probe.batch_size", self.batch_size, 1)
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            raise UserError(f"probe.learning_rates must be positive numbers, got {self.learning_rates}")
        if not self.layers or any(int(k) < 1 for k in self.layers):
            raise UserError(f"probe.layers counts last blocks: integers >= 1, got {self.layers}")
        if not self.weight_decays or any(not wd >= 0 for wd in self.weight_decays):
            raise UserError(f"probe.weight_decays must be numbers >= 0, got {self.weight_decays}")
        if self.poolings is not None and not self.poolings:
            raise UserError("probe.poolings is empty; give poolings (cls, mean, last, cls+mean) or null")
        unknown = [p for p in self.poolings or [] if p not in POOLINGS]
        if unknown:
            raise UserError(f"unknown probe.poolings {unknown}; choose from {list(POOLINGS)}")


@dataclass
class KnnOptions:
    """Weighted kNN on final-layer features (DINO/DINOv2 protocol).

    Args:
        ks: numbers of neighbours; the best on val is reported on test.
        temperature: votes are ``exp(cosine similarity / temperature)``.
        pooling: pooling of the kNN features; None = the backbone's default.
    """

    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    temperature: float = DEFAULT_TEMPERATURE
    pooling: str | None = None

    def __post_init__(self) -> None:
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise UserError(f"knn.ks must be integers >= 1, got {self.ks}")
        if not self.temperature > 0:
            raise UserError(f"knn.temperature must be > 0, got {self.temperature}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise UserError(f"unknown knn.pooling '{self.pooling}'; choose from {list(POOLINGS)}")


#: the recipe of ``configs/classification/finetune.yaml`` (a test keeps the two equal); compare's fine-tune
#: follows it, and its report states where it differs
FINETUNE_PRESET: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 32,
    "blr": 4e-3,
    "weight_decay": 0.05,
    "layer_decay": 0.9,
    "warmup_epochs": 0.3,
    "label_smoothing": 0.1,
    "patch_embed_lr_mult": 10.0,
    "gradient_clip_val": 1.0,
    "precision": "32-true",
    "image_size": 32,
}
#: compare's fine-tunes train in the preset's precision
FINETUNE_PRECISION = FINETUNE_PRESET["precision"]


@dataclass
class FinetuneOptions:
    """Short full fine-tune of every backbone: ``transferkit fit`` of ``transferkit.tasks.ImageClassifier``
    (``adaptation: finetune``) with the recipe of ``configs/classification/finetune.yaml``, reported at its
    best checkpoint on val. ``--finetune '{}'`` turns it on with these defaults; any ``--finetune.<option>``
    turns it on too.

    Args:
        epochs: training epochs.
        batch_size: training batch size.
        blr: base learning rate (AdamW; LR = blr * batch / 256).
        weight_decay: AdamW weight decay.
        layer_decay: layer-wise LR decay.
        warmup_epochs: linear warmup (fractions allowed).
        label_smoothing: label smoothing.
        patch_embed_lr_mult: LR multiplier of a language model's new PatchEmbed.
        gradient_clip_val: clip the gradients' norm to this value; 0 = no clipping.
        image_size: image size of the fine-tune; None = the compared data's (the probes' images).
        limit_train_batches: Lightning's limit per epoch (int batches or float fraction); None = all.
    """

    epochs: int = FINETUNE_PRESET["epochs"]
    batch_size: int = FINETUNE_PRESET["batch_size"]
    blr: float = FINETUNE_PRESET["blr"]
    weight_decay: float = FINETUNE_PRESET["weight_decay"]
    layer_decay: float = FINETUNE_PRESET["layer_decay"]
    warmup_epochs: float = FINETUNE_PRESET["warmup_epochs"]
    label_smoothing: float = FINETUNE_PRESET["label_smoothing"]
    patch_embed_lr_mult: float = FINETUNE_PRESET["patch_embed_lr_mult"]
    gradient_clip_val: float = FINETUNE_PRESET["gradient_clip_val"]
    image_size: int | None = None
    limit_train_batches: int | float | None = None

    def __post_init__(self) -> None:
        _at_least("finetune.epochs", self.epochs, 1)
        _at_least("finetune.batch_size", self.batch_size, 1)
        for key in ("blr", "patch_embed_lr_mult"):
            if not getattr(self, key) > 0:
                raise UserError(f"finetune.{key} must be > 0, got {getattr(self, key)}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.label_smoothing < 1:
            raise UserError("finetune.weight_decay and warmup_epochs must be >= 0, label_smoothing in [0, 1)")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not self.gradient_clip_val >= 0:
            raise UserError(
                f"finetune.gradient_clip_val must be >= 0 (0: no clipping), got {self.gradient_clip_val}"
            )
        if self.image_size is not None:
            _at_least("finetune.image_size", self.image_size, 1)

    def differences_from_preset(self, image_size: int) -> list[str]:
        """How a fine-tune at ``image_size`` with these options differs from the preset's recipe, in words."""
        out = []
        if image_size != FINETUNE_PRESET["image_size"]:
            source = "--finetune.image_size" if self.image_size is not None else "the compared data's"
            out.append(f"image size {image_size} ({source}; the preset: {FINETUNE_PRESET['image_size']})")
        for key, value in asdict(self).items():
            if key in FINETUNE_PRESET and key != "image_size" and value != FINETUNE_PRESET[key]:
                out.append(f"{key} {value:g} (the preset: {FINETUNE_PRESET[key]:g})")
        if self.limit_train_batches is not None:
            out.append(f"limit_train_batches {self.limit_train_batches:g} (the preset: every batch)")
        out.append(
            f"patch_embed LR x{self.patch_embed_lr_mult:g} on a language model's new PatchEmbed only (the preset, "
            "written for MiniLM, sets it for any backbone: on a vision model it would scale its pretrained "
            "patch embedding)"
        )
        return out


def _at_least(key: str, value: int, low: int) -> None:
    if int(value) < low:
        raise UserError(f"{key} must be >= {low}, got {value}")
