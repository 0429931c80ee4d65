"""Image classification on any registry backbone, with every adaptation paradigm as an option.

Paradigms (``adaptation``):

- ``linear_probe``: frozen backbone in eval mode (run under ``no_grad``), BN(affine=False)+Linear head, SGD,
  no weight decay — the MAE/DINOv2 linear evaluation;
- ``finetune``: every backbone parameter trains (AdamW, layer-wise LR decay, drop-path, Mixup/CutMix, label
  smoothing), optionally with the first ``freeze_blocks`` blocks frozen;
- ``lora``: the backbone stays frozen except LoRA adapters injected with peft (plus ``train_also`` params).

Freezing follows the backbone's one rule (:meth:`~transferkit.backbones.Backbone.frozen_names`); train and
eval modes follow :func:`~transferkit.tasks.modes.apply_train_modes`. Differential LRs per component come from
``optimizer.lr_mult`` (``patch_embed``, ``backbone``, ``head``). EMA of weights is Lightning's
``EMAWeightAveraging`` callback (``trainer.callbacks``, see ``configs/classification/finetune_vit_randaug.yaml``),
not code here. ``transferkit predict`` writes ``<run>/predictions.csv``
(:class:`~transferkit.tasks.writers.ClassificationPredictionWriter`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from transferkit.backbones import BackboneConfig, build_backbone_from_config
from transferkit.backbones.base import Backbone
from transferkit.errors import UserError
from transferkit.heads.classification import ClassificationHead
from transferkit.tasks.frozen import FrozenWeightsCheckpoint
from transferkit.tasks.modes import apply_train_modes, fitting, note_frozen_eval_modes, release_eval_warning
from transferkit.tasks.optim import (
    OptimConfig,
    backbone_head_param_groups,
    effective_batch_size,
    lightning_optimizers,
    resolve_optim_config,
    scaled_lr,
)
from transferkit.tasks.options import LoraOptions, as_dataclass, compile_patterns

log = logging.getLogger(__name__)


@dataclass
class RegularizationOptions:
    """Fine-tuning regularisation (timm's Mixup/CutMix and label smoothing).

    Args:
        mixup: Mixup alpha (0 = off).
        cutmix: CutMix alpha (0 = off).
        mix_prob: probability of applying Mixup/CutMix to a batch.
        label_smoothing: label smoothing of the targets.
        head_dropout: dropout before the classifier.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        k = "model.regularization"
        for name in ("mixup", "cutmix"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{k}.{name} is an alpha >= 0 (0 = off), got {getattr(self, name)}")
        for name in ("mix_prob",):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{k}.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("label_smoothing", "head_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{k}.{name} must be in [0, 1), got {getattr(self, name)}")


class ImageClassifier(FrozenWeightsCheckpoint, L.LightningModule):
    """Backbone + classification head, trained by one Lightning loop for every paradigm.

    Batches are ``(images, labels)``: images (B, 3, H, W) float in [0, 1], labels (B,) int64.
    ``num_classes``, ``class_names`` and ``image_size`` default to the datamodule's (filled in when training
    starts and stored in the checkpoint's hyper-parameters).
    """

    #: metric the CLI's checkpoint callback monitors, and its mode
    checkpoint_monitor = ("val/acc1", "max")
    export_task = "classification"

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        adaptation: Literal["linear_probe", "finetune", "lora"] = "linear_probe",
        freeze_blocks: int = 0,
        train_also: list[str] | None = None,
        head_batchnorm: bool | None = None,
        optimizer: OptimConfig = OptimConfig(),
        regularization: RegularizationOptions = RegularizationOptions(),
        lora: LoraOptions | None = None,
        save_frozen_weights: bool = False,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        """
        Args:
            backbone: which backbone and how to build it (name, pretrained, pooling, drop-path...).
            adaptation: ``linear_probe``, ``finetune`` or ``lora``.
            freeze_blocks: finetune/lora: freeze the input embedding and the first N blocks (a linear probe
                freezes the whole backbone already: giving it there is an error).
            train_also: regexes of backbone parameter names that train even when frozen by the paradigm
                (the backbone's ``new_parameter_names()``, e.g. a language model's PatchEmbed, always train under
                ``finetune``/``lora``; a linear probe keeps the whole backbone frozen unless listed here).
            head_batchnorm: BN(affine=False) before the linear head; None = on for ``linear_probe`` only.
            optimizer: optimiser and schedule; None fields take the adaptation's defaults.
            regularization: Mixup/CutMix/label smoothing/head dropout.
            lora: LoRA settings, for ``adaptation: lora`` only (None there: the defaults).
            save_frozen_weights: keep the frozen backbone weights in checkpoints; false (default) stores what
                trains and a digest of the rest, rebuilt from ``backbone`` on load (a probe checkpoint is KBs).
            num_classes: number of classes (linked from the datamodule by the CLI).
            class_names: class names (linked from the datamodule by the CLI).
            image_size: input size (linked from the datamodule by the CLI).
        """
        super().__init__()
        if adaptation not in ("linear_probe", "finetune", "lora"):
            raise UserError(f"model.adaptation must be linear_probe, finetune or lora, got '{adaptation}'")
        if lora is not None and adaptation != "lora":
            raise UserError(
                f"model.lora applies to adaptation: lora (this run is {adaptation}); remove model.lora"
            )
        if freeze_blocks and adaptation == "linear_probe":
            raise UserError(
                "model.freeze_blocks applies to finetune and lora; a linear probe freezes every block"
            )
        if freeze_blocks < 0:
            raise UserError(f"model.freeze_blocks must be >= 0, got {freeze_blocks}")
        compile_patterns(train_also or [], "model.train_also")
        if num_classes is not None and num_classes < 2:
            raise UserError(f"model.num_classes must be >= 2, got {num_classes}")
        # dataclass sections are kept as plain dicts in hparams so checkpoints load with weights_only=True
        self.backbone_cfg = as_dataclass(BackboneConfig, backbone)
        self.reg_cfg = as_dataclass(RegularizationOptions, regularization)
        self.lora_cfg = as_dataclass(LoraOptions, lora) if adaptation == "lora" else None
        self.optim_cfg = resolve_optim_config(as_dataclass(OptimConfig, optimizer), adaptation)
        self.save_hyperparameters()
        for key, value in (
            ("backbone", self.backbone_cfg),
            ("regularization", self.reg_cfg),
            ("lora", self.lora_cfg),
            ("optimizer", as_dataclass(OptimConfig, optimizer)),
        ):
            self.hparams[key] = asdict(value) if value is not None else None
        self.backbone: Backbone | None = None
        self.head: ClassificationHead | None = None
        self.final_metrics: dict[str, dict[str, Any]] = {}
        self.mixup_fn = None

    # ------------------------------------------------------------------ construction
    def configure_model(self) -> None:
        """Build backbone + head once sizes are known (the CLI links them from the datamodule); in a fit, set
        the train/eval modes before Lightning's model summary and eval-mode check read them."""
        if self.backbone is None:
            self._build()
        if fitting(self):
            self.set_train_modes()

    def _build(self) -> None:
        hp = self.hparams
        if hp.num_classes is None:
            raise UserError(
                "model.num_classes is unknown: give it, or train with a datamodule (the CLI links it)"
            )
        image_size = hp.image_size or 224
        self.backbone = build_backbone_from_config(self.backbone_cfg, image_size=image_size)
        self.backbone.check_input_size(image_size)
        batchnorm = hp.head_batchnorm if hp.head_batchnorm is not None else hp.adaptation == "linear_probe"
        self.head = ClassificationHead(
            self.backbone.pooled_dim(),
            hp.num_classes,
            batchnorm=batchnorm,
            dropout=self.reg_cfg.head_dropout,
        )
        self._apply_adaptation()
        reg = self.reg_cfg
        if reg.mixup > 0 or reg.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=reg.mixup,
                cutmix_alpha=reg.cutmix,
                prob=reg.mix_prob,
                label_smoothing=reg.label_smoothing,
                num_classes=hp.num_classes,
            )
        k = min(5, hp.num_classes)
        metrics = {}
        for split in ("val", "test"):
            metrics[f"{split}_acc1"] = MulticlassAccuracy(hp.num_classes, top_k=1, average="micro")
            metrics[f"{split}_acc5"] = MulticlassAccuracy(hp.num_classes, top_k=k, average="micro")
            metrics[f"{split}_per_class"] = MulticlassAccuracy(hp.num_classes, average=None)
        self.metrics = torch.nn.ModuleDict(metrics)
        trainable = self.backbone.num_params(trainable_only=True) + sum(
            p.numel() for p in self.head.parameters()
        )
        log.info(
            "backbone %s (%s, %.2fM params, pretrained=%s), %s, %.2fM trainable params",
            self.backbone.name,
            self.backbone.family,
            self.backbone.num_params() / 1e6,
            self.backbone.pretrained,
            hp.adaptation,
            trainable / 1e6,
        )

    def _apply_adaptation(self) -> None:
        """The one freeze rule of the backbone: a linear probe freezes all of it, LoRA all but the adapters
        (and the adapter's new layers), ``freeze_blocks`` the embedding and first N blocks; ``train_also``
        patterns train whatever they name."""
        hp, bb = self.hparams, self.backbone
        assert bb is not None
        if hp.adaptation == "lora":
            self._inject_lora()
        if hp.adaptation == "linear_probe":
            frozen = bb.frozen_names(None, include_new=True)
        elif hp.adaptation == "lora":
            frozen = {n for n in bb.frozen_names(None) if "lora_" not in n}
        else:
            frozen = set()
        frozen |= bb.frozen_names(hp.freeze_blocks) if hp.freeze_blocks else set()
        patterns = compile_patterns(hp.train_also or [], "model.train_also")
        bb.set_trainable({n for n in frozen if not any(r.search(n) for r in patterns)})

    def _inject_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        bb = self.backbone
        opts = self.lora_cfg or LoraOptions()
        targets = list(opts.target_modules) or list(bb.lora_target_modules)
        if not targets:
            raise UserError(f"backbone '{bb.name}' declares no LoRA targets; set model.lora.target_modules")
        config = LoraConfig(
            r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets
        )
        try:
            inject_adapter_in_model(config, bb)
        except ValueError as e:
            raise UserError(f"LoRA could not adapt '{bb.name}' with target_modules={targets}: {e}") from None

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, num_classes)."""
        if self.backbone_frozen:
            with torch.no_grad():
                feats = self.backbone(images)
        else:
            feats = self.backbone(images)
        return self.head(feats.float() if feats.dtype != self.head.fc.weight.dtype else feats)

    def set_train_modes(self) -> None:
        """Frozen parts (a probe's backbone, frozen blocks) in eval mode, the rest in train mode."""
        apply_train_modes(self)

    def on_fit_start(self) -> None:
        note_frozen_eval_modes(self)

    def on_train_start(self) -> None:
        release_eval_warning()

    def on_train_epoch_start(self) -> None:
        self.set_train_modes()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor] | None, batch_idx: int
    ) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was corrupt and skipped (data.on_corrupt=skip)
            return None
        images, labels = batch
        if self.mixup_fn is not None and images.shape[0] >= 2:
            even = images.shape[0] // 2 * 2  # timm's Mixup needs an even batch
            images, targets = self.mixup_fn(images[:even], labels[:even])
            logits = self(images)
            loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.reg_cfg.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None, split: str) -> None:
        if batch is None:
            return
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        for key in ("acc1", "acc5", "per_class"):
            self.metrics[f"{split}_{key}"].update(logits, labels)
        self.log(f"{split}/loss", loss, prog_bar=split == "val", batch_size=images.shape[0], sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> None:
        acc1 = self.metrics[f"{split}_acc1"].compute()
        acc5 = self.metrics[f"{split}_acc5"].compute()
        per_class = self.metrics[f"{split}_per_class"].compute()
        for key in ("acc1", "acc5", "per_class"):
            self.metrics[f"{split}_{key}"].reset()
        self.log(f"{split}/acc1", acc1, prog_bar=True)
        self.log(f"{split}/acc5", acc5)
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        loss = self.trainer.callback_metrics.get(f"{split}/loss")
        self.final_metrics[split] = {
            "acc1": float(acc1),
            "acc5": float(acc5),
            "loss": float(loss) if loss is not None else None,
            "per_class_acc": {n: float(a) for n, a in zip(names, per_class.tolist())},
        }

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """``probs`` ``(B, C)``, ``pred`` ``(B,)`` and, for the datamodule's ``{"image", "index"}`` batches, the
        images' dataset ``index`` ``(B,)`` (``predictions.csv`` is written from them). Images may also come as
        ``(images, labels)`` or a bare tensor."""
        if batch is None:  # every image of the batch was skipped as unreadable
            return None
        index = None
        if isinstance(batch, dict):
            images, index = batch["image"], batch["index"]
        else:
            images = batch[0] if isinstance(batch, list | tuple) else batch
        probs = self(images).softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if index is not None:
            out["index"] = index
        return out

    def configure_callbacks(self) -> list:
        """A :class:`~transferkit.tasks.writers.ClassificationPredictionWriter` unless the trainer has one."""
        from transferkit.tasks.writers import PredictionWriter

        if self._trainer is not None and any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            return []
        from transferkit.tasks.writers import ClassificationPredictionWriter

        return [ClassificationPredictionWriter()]

    def dry_run_step(self, batch: Any) -> dict[str, Any]:
        """``--validate_only``: the logits of two images of a training batch."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        out = self(images[:2])
        return {"batch_images": list(images.shape), "output": list(out.shape)}

    def image_backbone(self) -> Backbone | None:
        return self.backbone

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        batch = effective_batch_size(self.trainer)
        lr = scaled_lr(cfg, batch)
        groups = backbone_head_param_groups(self.backbone, self.head, cfg, lr=lr)
        optimizers = lightning_optimizers(groups, cfg, self.trainer)
        log.info("optimizer %s, peak lr %.3g (effective batch %d)", cfg.name, lr, batch)
        return optimizers

    def describe(self) -> dict[str, Any]:
        """Run facts for metrics.json / reports."""
        bb = self.backbone
        info = asdict(bb.info())
        info["trainable_params"] = bb.num_params(trainable_only=True) + sum(
            p.numel() for p in self.head.parameters() if p.requires_grad
        )
        return {"backbone": info, "adaptation": self.hparams.adaptation, "optimizer": asdict(self.optim_cfg)}
