"""Object detection with descriptions: a DETR-style head on any registry backbone.

The backbone's patch tokens (``forward_features``, or ``forward_intermediates`` of ``feature_layers``, prefix
tokens dropped) feed :class:`~transferkit.heads.detr.DetrHead`; :class:`~transferkit.heads.criterion.SetCriterion`
with an injected :class:`~transferkit.heads.matcher.HungarianMatcher` gives the named loss terms.

Backbone adaptation: ``frozen`` (weights fixed, run under ``no_grad`` in eval mode; parameters the adapter
creates fresh, e.g. a language model's PatchEmbed, still train), ``finetune`` (all of it), optionally with the
first ``freeze_blocks`` blocks frozen: the backbone's one freeze rule
(:meth:`~transferkit.backbones.Backbone.frozen_names`). Per-component learning rates come from
``optimizer.lr_mult``: ``patch_embed`` and ``backbone`` (default 0.1, DETR's backbone LR ratio) and ``head``
(the decoder, queries and prediction heads).

Evaluation: the shared :class:`~transferkit.tasks.evaluation.DetectionEvaluator` (COCO mAP on boxes in the
original images' pixels, description accuracy, previews). ``final_metrics`` (-> ``metrics.json``) holds ``map``,
``map_50``, ``map_75``, ``mar_1``, ``mar_10``, ``mar_100``, ``desc_acc``, per-class AP and the loss per split;
the test run also writes ``<run>/predictions/*.png`` with ground truth and predictions drawn.
``transferkit predict`` writes ``<run>/predictions.jsonl`` in the grounding format
(:class:`~transferkit.tasks.writers.GroundingPredictionWriter`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance

from transferkit.backbones import BackboneConfig, build_backbone_from_config
from transferkit.backbones.base import Backbone
from transferkit.data.grounding import boxes_from_model
from transferkit.errors import UserError
from transferkit.heads.criterion import SetCriterion
from transferkit.heads.detr import DetrHead, infer_grid, postprocess
from transferkit.heads.matcher import HungarianMatcher, Matcher
from transferkit.tasks.evaluation import DetectionEvaluator
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
from transferkit.tasks.options import (
    DecoderOptions,
    LossOptions,
    as_dataclass,
    concrete,
    module_config,
)

log = logging.getLogger(__name__)

#: DETR's optimiser recipe: AdamW, lr 1e-4, weight decay 1e-4, backbone at 0.1x the head's LR
DETR_OPTIM_DEFAULTS: dict[str, Any] = dict(
    name="adamw", lr=1e-4, weight_decay=1e-4, layer_decay=1.0, warmup_epochs=0.0
)
DETR_LR_MULT = {"patch_embed": 0.1, "backbone": 0.1}


class DetectionTask(FrozenWeightsCheckpoint, L.LightningModule):
    """Backbone + DETR head, trained with Hungarian matching; evaluated with COCO mAP and description
    accuracy.

    Batches are ``(images, targets)`` from :class:`~transferkit.data.detection.DetectionDataModule`: images
    ``(B, 3, S, S)`` in [0, 1], targets a list of dicts (``boxes`` normalised cxcywh, ``labels``, ``desc``,
    ``orig_size`` (H, W), ``image``). ``class_names``, ``desc_vocab`` and ``image_size`` default to the
    datamodule's; a checkpoint's own vocabularies win when one is loaded.
    """

    checkpoint_monitor = ("val/map_50", "max")
    export_task = "detection"

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        adaptation: Literal["frozen", "finetune"] = "finetune",
        freeze_blocks: int = 0,
        feature_layers: list[int] | None = None,
        decoder: DecoderOptions = DecoderOptions(),
        matcher: Matcher = lazy_instance(HungarianMatcher),
        loss: LossOptions = LossOptions(),
        optimizer: OptimConfig = OptimConfig(),
        score: Literal["class", "objectness", "class_x_objectness"] = "class",
        num_preview_images: int = 8,
        save_frozen_weights: bool = False,
        class_names: list[str] | None = None,
        desc_vocab: list[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        """
        Args:
            backbone: which backbone and how to build it.
            adaptation: ``frozen`` (backbone fixed, its new layers excepted) or ``finetune``.
            freeze_blocks: finetune: freeze the input embedding and the first N blocks.
            feature_layers: backbone blocks whose tokens the decoder reads (``forward_intermediates``
                indices, negative from the end; several = multi-level); None = ``forward_features``.
            decoder: decoder size, queries, aux losses.
            matcher: the query-to-object matcher, by ``class_path`` (default: Hungarian, DETR's costs 1, 5, 2).
            loss: loss weights, no-object weight, description head on/off.
            optimizer: optimiser and schedule; None fields take DETR's recipe (AdamW, lr 1e-4, wd 1e-4,
                ``lr_mult`` patch_embed/backbone 0.1).
            score: detection score: ``class`` (DETR), ``objectness`` or ``class_x_objectness``.
            num_preview_images: test images drawn with boxes into ``<run>/predictions/``.
            save_frozen_weights: keep frozen backbone weights in checkpoints; false (default) stores what trains
                and a digest of the rest, rebuilt from ``backbone`` on load.
            class_names: class names (linked from the datamodule by the CLI; a checkpoint's own win on load).
            desc_vocab: description vocabulary (linked from the datamodule's training descriptions).
            image_size: input size (linked from the datamodule).
        """
        super().__init__()
        self.backbone_cfg = as_dataclass(BackboneConfig, backbone)
        self.decoder_cfg = as_dataclass(DecoderOptions, decoder)
        self.matcher = concrete(matcher)
        self.loss_cfg = as_dataclass(LossOptions, loss)
        opt = as_dataclass(OptimConfig, optimizer)
        self.save_hyperparameters(ignore=["matcher"])
        for key, value in (
            ("backbone", self.backbone_cfg),
            ("decoder", self.decoder_cfg),
            ("loss", self.loss_cfg),
            ("optimizer", opt),
        ):
            self.hparams[key] = asdict(value)
        self.hparams["matcher"] = module_config(self.matcher)
        filled = {
            k: (getattr(opt, k) if getattr(opt, k) is not None else v) for k, v in DETR_OPTIM_DEFAULTS.items()
        }
        if opt.blr is not None and opt.lr is None:
            filled["lr"] = None  # an explicit blr means batch-scaled LR
        self.optim_cfg = resolve_optim_config(
            OptimConfig(**{**opt.__dict__, **filled, "lr_mult": {**DETR_LR_MULT, **opt.lr_mult}}), "finetune"
        )
        if freeze_blocks < 0:
            raise UserError(f"model.freeze_blocks must be >= 0, got {freeze_blocks}")
        if adaptation == "frozen" and freeze_blocks:
            raise UserError(
                "model.freeze_blocks applies to adaptation 'finetune'; 'frozen' freezes every block"
            )
        if num_preview_images < 0:
            raise UserError(f"model.num_preview_images must be >= 0, got {num_preview_images}")
        self.backbone: Backbone | None = None
        self.head: DetrHead | None = None
        self.criterion: SetCriterion | None = None
        self.final_metrics: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ construction
    def configure_model(self) -> None:
        """Build backbone, head and criterion once the vocabularies are known; in a fit, set the train/eval
        modes before Lightning's model summary and eval-mode check read them."""
        if self.backbone is None:
            self._build()
        if fitting(self):
            self.set_train_modes()

    def _build(self) -> None:
        hp = self.hparams
        if not hp.class_names:
            raise UserError(
                "model.class_names are unknown: give them, or train with a datamodule (the CLI links them)"
            )
        image_size = int(hp.image_size or 224)
        self.backbone = build_backbone_from_config(self.backbone_cfg, image_size=image_size)
        self.backbone.check_input_size(image_size)
        if hp.feature_layers:
            try:
                self.backbone.resolve_indices(list(hp.feature_layers))
            except UserError as e:
                raise UserError(f"model.feature_layers: {e}") from None
        self._apply_adaptation()
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            levels, _ = self._tokens(torch.zeros(1, 3, image_size, image_size))
            self.backbone.train(was)
        d = self.decoder_cfg
        num_descs = len(hp.desc_vocab or []) if self.loss_cfg.description else 0
        self.head = d.build([t.shape[-1] for t in levels], len(hp.class_names), num_descs)
        self.criterion = self.loss_cfg.build(len(hp.class_names), self.matcher, num_descs)
        self.evaluator = DetectionEvaluator(list(hp.class_names), num_previews=hp.num_preview_images)
        log.info(
            "detector: backbone %s (%.2fM params, %s, %d tokens of width %s), %d classes, %d descriptions, "
            "%d queries, %.2fM trainable params",
            self.backbone.name,
            self.backbone.num_params() / 1e6,
            hp.adaptation,
            sum(t.shape[1] for t in levels),
            [t.shape[-1] for t in levels],
            len(hp.class_names),
            num_descs,
            d.num_queries,
            sum(p.numel() for p in self.parameters() if p.requires_grad) / 1e6,
        )

    def _apply_adaptation(self) -> None:
        """``frozen``: the whole backbone but its new layers; ``freeze_blocks``: the embedding and first N."""
        hp, bb = self.hparams, self.backbone
        assert bb is not None
        if hp.adaptation == "frozen":
            bb.set_trainable(bb.frozen_names(None))
        else:
            bb.set_trainable(bb.frozen_names(hp.freeze_blocks) if hp.freeze_blocks else set())

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    # ------------------------------------------------------------------ forward
    def _tokens(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Patch tokens per level ``(B, N_l, D_l)`` (prefix tokens dropped) and their grids."""
        bb = self.backbone
        layers = self.hparams.feature_layers
        tokens = bb.forward_intermediates(images, list(layers)) if layers else [bb.forward_features(images)]
        h, w = images.shape[-2:]
        levels, grids = [], []
        for t in tokens:
            t = t[:, bb.num_prefix_tokens :]
            try:
                grids.append(infer_grid(t.shape[1], h, w))
            except ValueError as e:
                raise UserError(f"backbone '{bb.name}': {e}; it cannot feed a detection head") from None
            levels.append(t)
        return levels, grids

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """images ``(B, 3, S, S)`` in [0, 1] -> the head's prediction dict (see :class:`DetrHead`)."""
        if self.backbone_frozen:
            with torch.no_grad():
                levels, grids = self._tokens(images)
        else:
            levels, grids = self._tokens(images)
        dtype = self.head.query_embed.weight.dtype
        return self.head([t.to(dtype) for t in levels], grids)

    def set_train_modes(self) -> None:
        """A frozen backbone (or frozen blocks) in eval mode, the rest in train mode."""
        apply_train_modes(self)

    def on_fit_start(self) -> None:
        note_frozen_eval_modes(self)

    def on_train_start(self) -> None:
        release_eval_warning()

    def on_train_epoch_start(self) -> None:
        self.set_train_modes()

    # ------------------------------------------------------------------ steps
    def _loss(self, outputs: dict, targets: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.criterion(outputs, targets)
        return self.criterion.total(terms), terms

    def training_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss, terms = self._loss(self(images), targets)
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k, v in terms.items():
            if not re.search(r"_\d+$", k):  # the last layer's terms; aux terms would flood the logs
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, list[dict]], split: str) -> None:
        images, targets = batch
        outputs = self(images)
        loss, terms = self._loss(outputs, targets)
        bs = images.shape[0]
        self.log(f"{split}/loss", loss, prog_bar=split == "val", batch_size=bs, sync_dist=True)
        for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_desc"):
            if k in terms:
                self.log(f"{split}/{k}", terms[k], batch_size=bs, sync_dist=True)
        sizes = torch.stack([t["orig_size"] for t in targets])
        dets = postprocess(outputs, sizes, self.hparams.score)
        gts = [
            {
                "boxes": boxes_from_model(t["boxes"].float(), t["orig_size"].tolist()),
                "labels": t["labels"],
                "desc": t["desc"],
            }
            for t in targets
        ]
        self.evaluator.update(split, dets, gts)
        if split == "test":
            self._keep_previews(images, dets, targets, gts)

    def _keep_previews(
        self, images: torch.Tensor, dets: list[dict], targets: list[dict], gts: list[dict]
    ) -> None:
        """Hand the evaluator test images with their boxes in the model input's pixels (score >= 0.5 shown)."""
        vocab, names = list(self.hparams.desc_vocab or []), list(self.hparams.class_names)
        s = images.shape[-1]
        for img, d, t, g in zip(images, dets, targets, gts):
            keep = d["scores"] >= 0.5
            h, w = t["orig_size"].tolist()
            to_input = torch.tensor([s / w, s / h] * 2)  # original image pixels -> model input pixels
            if "desc" in d:
                labels = [vocab[j] if j < len(vocab) else "?" for j in d["desc"][keep].tolist()]
            else:
                labels = [names[j] for j in d["labels"][keep].tolist()]
            labels = [f"{lab} {sc:.2f}" for lab, sc in zip(labels, d["scores"][keep].tolist())]
            self.evaluator.keep_preview(
                img, g["boxes"].cpu() * to_input, d["boxes"][keep].cpu() * to_input, labels
            )

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> None:
        result = self.evaluator.compute(split, with_descriptions=self.loss_cfg.description)
        for k in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100"):
            self.log(f"{split}/{k}", result[k], prog_bar=k == "map_50")
        if self.loss_cfg.description:
            self.log(f"{split}/desc_acc", result["desc_acc"])
        loss = self.trainer.callback_metrics.get(f"{split}/loss")
        self.final_metrics[split] = {**result, "loss": float(loss) if loss is not None else None}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.evaluator.start_test()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        self.evaluator.end_test(self.trainer)

    def predict_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> list[dict[str, Any]]:
        """Grounding records, one per image: ``images`` (absolute path), ``width``, ``height`` and ``objects``
        (``bbox_2d`` xyxy pixels of the original image, ``desc``, ``category``, ``score``, ``objectness``),
        sorted by score (see :func:`postprocess`)."""
        images, targets = batch
        sizes = torch.stack([t["orig_size"] for t in targets])
        dets = postprocess(self(images), sizes, self.hparams.score)
        names, vocab = list(self.hparams.class_names), list(self.hparams.desc_vocab or [])
        records = []
        for t, d in zip(targets, dets):
            objects = []
            for i in d["scores"].argsort(descending=True).tolist():
                label = names[int(d["labels"][i])]
                objects.append(
                    {
                        "bbox_2d": [round(float(v), 2) for v in d["boxes"][i]],
                        "desc": vocab[int(d["desc"][i])] if "desc" in d and vocab else label,
                        "category": label,
                        "score": round(float(d["scores"][i]), 4),
                        "objectness": round(float(d["objectness"][i]), 4),
                    }
                )
            h, w = t["orig_size"].tolist()
            records.append(
                {
                    "images": [str(Path(t["image"]).resolve())],
                    "width": int(w),
                    "height": int(h),
                    "objects": objects,
                }
            )
        return records

    def configure_callbacks(self) -> list:
        """A :class:`~transferkit.tasks.writers.GroundingPredictionWriter` unless the trainer has a writer."""
        from transferkit.tasks.writers import GroundingPredictionWriter, PredictionWriter

        if self._trainer is not None and any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            return []
        return [GroundingPredictionWriter()]

    def dry_run_step(self, batch: tuple[torch.Tensor, list[dict]]) -> dict[str, Any]:
        """``--validate_only``: the head's outputs and the set loss of one training batch."""
        images, targets = batch
        loss, terms = self._loss(self(images), targets)
        return {"batch_images": list(images.shape), "loss": round(float(loss), 4), "terms": sorted(terms)}

    def image_backbone(self) -> Backbone | None:
        return self.backbone

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        lr = scaled_lr(cfg, effective_batch_size(self.trainer))
        groups = backbone_head_param_groups(self.backbone, self.head, cfg, lr=lr)
        optimizers = lightning_optimizers(groups, cfg, self.trainer)
        log.info("optimizer %s, head lr %.3g, lr_mult %s", cfg.name, lr, cfg.lr_mult)
        return optimizers

    def describe(self) -> dict[str, Any]:
        """Run facts for metrics.json / reports."""
        info = asdict(self.backbone.info())
        info["trainable_params"] = self.backbone.num_params(trainable_only=True)
        return {
            "backbone": info,
            "adaptation": self.hparams.adaptation,
            "head_params": sum(p.numel() for p in self.head.parameters()),
            "decoder": asdict(self.decoder_cfg),
            "num_classes": len(self.hparams.class_names),
            "desc_vocab_size": len(self.hparams.desc_vocab or []),
            "optimizer": asdict(self.optim_cfg),
        }
