"""Object detection with descriptions: a DETR-style head on any registry backbone.

The backbone's patch tokens (``forward_features``, or ``forward_intermediates`` of ``feature_layers``, prefix
tokens dropped) feed :class:`~transferkit.heads.detr.DetrHead`; :class:`~transferkit.heads.criterion.SetCriterion`
with an injected :class:`~transferkit.heads.matcher.HungarianMatcher` gives the named loss terms.

Backbone adaptation: ``frozen`` (pretrained weights fixed, run under ``no_grad`` in eval mode; parameters the
adapter creates fresh, e.g. a language model's PatchEmbed, still train), ``finetune`` (all of it), optionally
with the first ``freeze_blocks`` blocks frozen. Per-component learning rates come from
``optimizer.lr_mult``: ``patch_embed`` and ``backbone`` (default 0.1, DETR's backbone LR ratio) and ``head``
(the decoder, queries and prediction heads).

Evaluation: torchmetrics ``MeanAveragePrecision`` (faster-coco-eval backend) on boxes in the original images'
pixels, plus description accuracy over predictions matched to a ground-truth object at IoU >= 0.5 (greedy by
score, as COCO matches). ``final_metrics`` (-> ``metrics.json``) holds ``map``, ``map_50``, ``map_75``,
``mar_1``, ``mar_10``, ``mar_100``, ``desc_acc``, per-class AP and the loss per split; the test run also
writes ``<run>/predictions/*.png`` with ground truth (green) and predictions (red) drawn.
``transferkit predict`` writes ``<run>/predictions.jsonl`` in the grounding format (see
:class:`GroundingPredictionWriter`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torchmetrics.aggregation import SumMetric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from transferkit.backbones import BackboneConfig, build_backbone_from_config
from transferkit.backbones.base import Backbone
from transferkit.data.grounding import boxes_from_model
from transferkit.errors import UserError
from transferkit.heads.criterion import DEFAULT_WEIGHTS, LOSSES, SetCriterion
from transferkit.heads.detr import DetrHead, infer_grid, postprocess
from transferkit.heads.matcher import HungarianMatcher
from transferkit.tasks.classification import as_dataclass
from transferkit.tasks.common import hparams_from_checkpoint, set_hparam
from transferkit.tasks.optim import (
    OptimConfig,
    backbone_head_param_groups,
    effective_batch_size,
    lightning_optimizers,
    resolve_optim_config,
    scaled_lr,
)

log = logging.getLogger(__name__)

#: DETR's optimiser recipe: AdamW, lr 1e-4, weight decay 1e-4, backbone at 0.1x the head's LR
DETR_OPTIM_DEFAULTS: dict[str, Any] = dict(
    name="adamw", lr=1e-4, weight_decay=1e-4, layer_decay=1.0, warmup_epochs=0.0
)
DETR_LR_MULT = {"patch_embed": 0.1, "backbone": 0.1}


@dataclass
class DecoderOptions:
    """The DETR decoder.

    Args:
        hidden_dim: decoder width (multiple of 4 and of nhead).
        num_queries: object queries = the most detections per image.
        num_layers: decoder layers.
        nhead: attention heads.
        dim_feedforward: decoder MLP width.
        dropout: decoder dropout.
        aux_loss: losses on every decoder layer's predictions, not only the last.
        query_groups: training-only query groups, each matched one-to-one on its own (Group DETR: faster
            convergence at no inference cost); 1 = plain DETR.
        pos_temperature: sine position embedding temperature (DETR 10000; ~20 for grids of a few tokens).
        pos_gain: factor on the position embedding added to the tokens (DETR 1; ~2 localises sooner on small
            grids).
    """

    hidden_dim: int = 256
    num_queries: int = 100
    num_layers: int = 6
    nhead: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    aux_loss: bool = True
    query_groups: int = 1
    pos_temperature: float = 10000.0
    pos_gain: float = 1.0


@dataclass
class MatcherOptions:
    """Hungarian matching costs (DETR: class 1, L1 5, GIoU 2).

    Args:
        cost_class: weight of ``-p[label]``.
        cost_bbox: weight of the L1 box distance (normalised cxcywh).
        cost_giou: weight of ``-GIoU``.
    """

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


@dataclass
class LossOptions:
    """Set-criterion terms and weights.

    Args:
        weights: weight per term: ``loss_ce`` (1), ``loss_bbox`` (5), ``loss_giou`` (2), ``loss_obj`` (1),
            ``loss_desc`` (1); auxiliary layers use the same weights.
        eos_coef: class weight of "no object" (DETR: 0.1).
        description: train the description head (classification over the training descriptions).
    """

    weights: dict[str, float] = field(default_factory=dict)
    eos_coef: float = 0.1
    description: bool = True


def match_for_description(
    boxes: torch.Tensor, scores: torch.Tensor, gt_boxes: torch.Tensor, iou_threshold: float = 0.5
) -> list[tuple[int, int]]:
    """Greedy COCO-style matching: predictions in descending ``scores`` order each take the unmatched
    ground-truth box of highest IoU >= ``iou_threshold``. Boxes xyxy in one frame; returns
    ``(pred_idx, gt_idx)`` pairs."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return []
    iou = box_iou(boxes, gt_boxes)
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool, device=iou.device)
    pairs = []
    for p in scores.argsort(descending=True).tolist():
        cand = iou[p].masked_fill(taken, -1.0)
        best = int(cand.argmax())
        if cand[best] >= iou_threshold:
            taken[best] = True
            pairs.append((p, best))
    return pairs


class DetectionTask(L.LightningModule):
    """Backbone + DETR head, trained with Hungarian matching; evaluated with COCO mAP and description
    accuracy.

    Batches are ``(images, targets)`` from :class:`~transferkit.data.detection.DetectionDataModule`: images
    ``(B, 3, S, S)`` in [0, 1], targets a list of dicts (``boxes`` normalised cxcywh, ``labels``, ``desc``,
    ``orig_size`` (H, W), ``image``). ``class_names``, ``desc_vocab`` and ``image_size`` default to the
    datamodule's; a checkpoint's own vocabularies win when one is loaded.
    """

    checkpoint_monitor = ("val/map_50", "max")

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        adaptation: Literal["frozen", "finetune"] = "finetune",
        freeze_blocks: int = 0,
        feature_layers: list[int] | None = None,
        decoder: DecoderOptions = DecoderOptions(),
        matcher: MatcherOptions = MatcherOptions(),
        loss: LossOptions = LossOptions(),
        optimizer: OptimConfig = OptimConfig(),
        score: Literal["class", "objectness", "class_x_objectness"] = "class",
        num_preview_images: int = 8,
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
            matcher: Hungarian matching costs.
            loss: loss weights, no-object weight, description head on/off.
            optimizer: optimiser and schedule; None fields take DETR's recipe (AdamW, lr 1e-4, wd 1e-4,
                ``lr_mult`` patch_embed/backbone 0.1).
            score: detection score: ``class`` (DETR), ``objectness`` or ``class_x_objectness``.
            num_preview_images: test images drawn with boxes into ``<run>/predictions/``.
            class_names: class names (default: the datamodule's).
            desc_vocab: description vocabulary (default: the datamodule's training descriptions).
            image_size: input size (default: the datamodule's).
        """
        super().__init__()
        self.backbone_cfg = as_dataclass(BackboneConfig, backbone)
        self.decoder_cfg = as_dataclass(DecoderOptions, decoder)
        self.matcher_cfg = as_dataclass(MatcherOptions, matcher)
        self.loss_cfg = as_dataclass(LossOptions, loss)
        opt = as_dataclass(OptimConfig, optimizer)
        self.save_hyperparameters()
        for key, value in (
            ("backbone", self.backbone_cfg),
            ("decoder", self.decoder_cfg),
            ("matcher", self.matcher_cfg),
            ("loss", self.loss_cfg),
            ("optimizer", opt),
        ):
            self.hparams[key] = asdict(value)
        filled = {
            k: (getattr(opt, k) if getattr(opt, k) is not None else v) for k, v in DETR_OPTIM_DEFAULTS.items()
        }
        if opt.blr is not None and opt.lr is None:
            filled["lr"] = None  # an explicit blr means batch-scaled LR
        self.optim_cfg = resolve_optim_config(
            OptimConfig(**{**opt.__dict__, **filled, "lr_mult": {**DETR_LR_MULT, **opt.lr_mult}}), "finetune"
        )
        unknown = set(self.loss_cfg.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise UserError(f"unknown loss weight(s) {sorted(unknown)}; known: {list(DEFAULT_WEIGHTS)}")
        if freeze_blocks < 0:
            raise UserError(f"freeze_blocks must be >= 0, got {freeze_blocks}")
        if adaptation == "frozen" and freeze_blocks:
            raise UserError("freeze_blocks applies to adaptation 'finetune'; 'frozen' freezes every block")
        if min(self.decoder_cfg.num_queries, self.decoder_cfg.num_layers, self.decoder_cfg.query_groups) < 1:
            raise UserError("decoder.num_queries, num_layers and query_groups must be >= 1")
        self.backbone: Backbone | None = None
        self.head: DetrHead | None = None
        self.criterion: SetCriterion | None = None
        self.final_metrics: dict[str, dict[str, Any]] = {}
        self._previews: list[tuple[torch.Tensor, dict, dict]] = []
        if class_names is not None:
            self.configure_model()

    # ------------------------------------------------------------------ construction
    def bind_datamodule(self, dm: Any) -> None:
        """Take ``class_names``, ``desc_vocab`` and ``image_size`` from ``dm`` where not given."""
        for key in ("class_names", "desc_vocab", "image_size"):
            if self.hparams.get(key) is None and hasattr(dm, key):
                set_hparam(self, key, getattr(dm, key))

    def configure_model(self) -> None:
        """Build backbone, head and criterion once the vocabularies are known."""
        if self.backbone is not None:
            return
        # when a checkpoint is about to be loaded, its vocabularies and image size decide the head's shape
        hparams_from_checkpoint(self, ("class_names", "desc_vocab", "image_size"))
        if self._trainer is not None and getattr(self._trainer, "datamodule", None) is not None:
            self.bind_datamodule(self._trainer.datamodule)
        hp = self.hparams
        if not hp.class_names:
            raise UserError("class_names are unknown: give model.class_names or train with a datamodule")
        image_size = int(hp.image_size or 224)
        self.backbone = build_backbone_from_config(self.backbone_cfg, image_size=image_size)
        self._apply_adaptation()
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            levels, _ = self._tokens(torch.zeros(1, 3, image_size, image_size))
            self.backbone.train(was)
        d = self.decoder_cfg
        num_descs = len(hp.desc_vocab or []) if self.loss_cfg.description else 0
        self.head = DetrHead(
            [t.shape[-1] for t in levels],
            len(hp.class_names),
            num_descs,
            hidden_dim=d.hidden_dim,
            num_queries=d.num_queries,
            num_layers=d.num_layers,
            nhead=d.nhead,
            dim_feedforward=d.dim_feedforward,
            dropout=d.dropout,
            aux_loss=d.aux_loss,
            query_groups=d.query_groups,
            pos_temperature=d.pos_temperature,
            pos_gain=d.pos_gain,
        )
        m = self.matcher_cfg
        self.criterion = SetCriterion(
            len(hp.class_names),
            HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou),
            weight_dict=self.loss_cfg.weights,
            eos_coef=self.loss_cfg.eos_coef,
            losses=tuple(x for x in LOSSES if x != "desc" or num_descs > 0),
        )
        kw = dict(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", class_metrics=True)
        self.map_metrics = torch.nn.ModuleDict({s: MeanAveragePrecision(**kw) for s in ("val", "test")})
        self.desc_counts = torch.nn.ModuleDict(
            {f"{s}_{k}": SumMetric() for s in ("val", "test") for k in ("correct", "matched")}
        )
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
        hp, bb = self.hparams, self.backbone
        assert bb is not None
        adapter_frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
        groups = bb.layer_groups()
        if hp.freeze_blocks > len(groups) - 2:
            raise UserError(
                f"freeze_blocks={hp.freeze_blocks} but backbone '{bb.name}' has {len(groups) - 2} blocks"
            )
        if hp.adaptation == "frozen":
            frozen = {n for n, _ in bb.named_parameters()}
        else:
            frozen = {n for g in groups[: hp.freeze_blocks + 1] for n in g} if hp.freeze_blocks else set()
        if bb.pretrained:
            frozen -= bb.new_parameter_names()  # layers the adapter made fresh must learn
        for n, p in bb.named_parameters():
            p.requires_grad_(n not in adapter_frozen and n not in frozen)

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

    def on_train_epoch_start(self) -> None:
        if self.backbone_frozen:
            self.backbone.eval()

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
            {"boxes": boxes_from_model(t["boxes"].float(), t["orig_size"].tolist()), "labels": t["labels"]}
            for t in targets
        ]
        self.map_metrics[split].update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets], gts)
        if "desc" in dets[0]:
            correct = matched = 0
            for d, g, t in zip(dets, gts, targets):
                pairs = match_for_description(d["boxes"], d["scores"], g["boxes"])
                matched += len(pairs)
                correct += sum(int(d["desc"][p] == t["desc"][q]) for p, q in pairs)
            self.desc_counts[f"{split}_correct"].update(torch.tensor(float(correct), device=self.device))
            self.desc_counts[f"{split}_matched"].update(torch.tensor(float(matched), device=self.device))
        if split == "test" and len(self._previews) < self.hparams.num_preview_images:
            for img, d, t in zip(images, dets, targets):
                if len(self._previews) < self.hparams.num_preview_images:
                    self._previews.append((img.cpu(), {k: v.cpu() for k, v in d.items()}, t))

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> None:
        metric = self.map_metrics[split]
        result = metric.compute()
        metric.reset()
        correct = float(self.desc_counts[f"{split}_correct"].compute())
        matched = float(self.desc_counts[f"{split}_matched"].compute())
        for k in ("correct", "matched"):
            self.desc_counts[f"{split}_{k}"].reset()
        desc_acc = correct / matched if matched else 0.0
        scalars = {k: float(result[k]) for k in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")}
        for k, v in scalars.items():
            self.log(f"{split}/{k}", v, prog_bar=k == "map_50")
        if self.loss_cfg.description:
            self.log(f"{split}/desc_acc", desc_acc)
        names = self.hparams.class_names
        classes = result["classes"].flatten().tolist()
        per_class = result["map_per_class"].flatten().tolist()
        loss = self.trainer.callback_metrics.get(f"{split}/loss")
        self.final_metrics[split] = {
            **scalars,
            "desc_acc": desc_acc if self.loss_cfg.description else None,
            "desc_matched": int(matched),
            "loss": float(loss) if loss is not None else None,
            "per_class_ap": {names[c]: float(a) for c, a in zip(classes, per_class) if 0 <= c < len(names)},
        }

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._previews = []

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if self._previews and self.trainer.is_global_zero and self.trainer.default_root_dir:
            self.save_previews(Path(self.trainer.default_root_dir) / "predictions")
        self._previews = []

    def save_previews(self, out_dir: Path, min_score: float = 0.5, scale: int = 4) -> list[Path]:
        """Draw the kept test images (upscaled ``scale`` x) with ground truth (green) and predictions with
        score >= ``min_score`` (red, labelled with their description) into ``out_dir/test_*.png``."""
        from torchvision.io import write_png
        from torchvision.utils import draw_bounding_boxes

        vocab = self.hparams.desc_vocab or []
        names = self.hparams.class_names
        paths = []
        for i, (img, det, tgt) in enumerate(self._previews):
            s = img.shape[-1]
            big = torch.nn.functional.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
            canvas = (big.clamp(0, 1) * 255).to(torch.uint8)
            size = (s * scale, s * scale)
            gt = boxes_from_model(tgt["boxes"].float(), size)
            canvas = draw_bounding_boxes(canvas, gt, colors="lime", width=1)
            keep = det["scores"] >= min_score
            orig = tgt["orig_size"].tolist()
            boxes = det["boxes"][keep] * torch.tensor([size[1] / orig[1], size[0] / orig[0]] * 2)
            if "desc" in det:
                labels = [vocab[j] if j < len(vocab) else "?" for j in det["desc"][keep].tolist()]
            else:
                labels = [names[j] for j in det["labels"][keep].tolist()]
            labels = [f"{lab} {sc:.2f}" for lab, sc in zip(labels, det["scores"][keep].tolist())]
            if len(boxes):
                canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors="red", width=2)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"test_{i:02d}.png"
            write_png(canvas, str(path))
            paths.append(path)
        log.info("drew %d test images with boxes into %s", len(paths), out_dir)
        return paths

    def predict_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``image`` (path), ``orig_size`` (H, W) and ``detections`` (see :func:`postprocess`,
        boxes in the original image's pixels)."""
        images, targets = batch
        sizes = torch.stack([t["orig_size"] for t in targets])
        dets = postprocess(self(images), sizes, self.hparams.score)
        return [
            {
                "image": t["image"],
                "orig_size": t["orig_size"].tolist(),
                "detections": {k: v.cpu() for k, v in d.items()},
            }
            for t, d in zip(targets, dets)
        ]

    def configure_callbacks(self) -> list:
        """A :class:`GroundingPredictionWriter` unless the trainer already has one."""
        trainer_cbs = self.trainer.callbacks if self._trainer is not None else []
        if any(isinstance(c, GroundingPredictionWriter) for c in trainer_cbs):
            return []
        return [GroundingPredictionWriter()]

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


class GroundingPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` detections as grounding JSONL, one record per image::

        {"images": ["/abs/img.png"], "width": W, "height": H, "objects": [{"bbox_2d": [x1, y1, x2, y2],
         "desc": "red circle/large/visible", "category": "red circle", "score": 0.97, "objectness": 0.99}]}

    Boxes are absolute pixels of the original image, objects sorted by score. The file appears atomically
    when prediction ends (``<run>/predictions.jsonl`` by default; one file per rank under DDP).

    Args:
        output: where to write; default ``<trainer.default_root_dir>/predictions.jsonl``.
        score_threshold: keep detections with at least this score.
        max_detections: keep at most this many detections per image.
    """

    def __init__(
        self, output: str | None = None, score_threshold: float = 0.5, max_detections: int = 100
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"score_threshold is a probability in [0, 1], got {score_threshold}")
        self.output = output
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self._file = None
        self._tmp: Path | None = None
        self.path: Path | None = None
        self.count = 0

    def _target(self, trainer: L.Trainer) -> Path:
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path = self._target(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._file = self._tmp.open("w", encoding="utf-8")
        self.count = 0

    def record(self, pred: dict[str, Any], class_names: list[str], desc_vocab: list[str]) -> dict[str, Any]:
        """One ``predict_step`` item -> a grounding record (dict)."""
        det = pred["detections"]
        keep = (det["scores"] >= self.score_threshold).nonzero().flatten()[: self.max_detections]
        objects = []
        for i in keep.tolist():
            label = class_names[int(det["labels"][i])]
            desc = desc_vocab[int(det["desc"][i])] if "desc" in det and desc_vocab else label
            objects.append(
                {
                    "bbox_2d": [round(float(v), 2) for v in det["boxes"][i]],
                    "desc": desc,
                    "category": label,
                    "score": round(float(det["scores"][i]), 4),
                    "objectness": round(float(det["objectness"][i]), 4),
                }
            )
        h, w = pred["orig_size"]
        return {
            "images": [str(Path(pred["image"]).resolve())],
            "width": int(w),
            "height": int(h),
            "objects": objects,
        }

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        names = list(pl_module.hparams.class_names)
        vocab = list(pl_module.hparams.desc_vocab or [])
        for pred in prediction:
            self._file.write(json.dumps(self.record(pred, names, vocab), ensure_ascii=False) + "\n")
            self.count += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        log.info("wrote %d prediction records to %s", self.count, self.path)
