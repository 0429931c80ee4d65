"""The one detection evaluator, composed into both detection tasks (``DetectionTask``, ``GroundingVLMTask``).

Per split: COCO mAP from torchmetrics' ``MeanAveragePrecision`` (faster-coco-eval backend) given COCO's own
IoU and recall thresholds (``np.linspace(0.5, 0.95, 10)``, ``np.linspace(0, 1, 101)``, as float64: torchmetrics'
float32 defaults move mAP by up to 1e-3), description accuracy over predictions matched to a ground-truth box
at IoU >= 0.5 (greedy by score, as COCO matches), and preview images of the first test images with ground
truth and predictions drawn.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

log = logging.getLogger(__name__)

MAP_KEYS = ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")
COCO_IOU_THRESHOLDS = [float(x) for x in np.linspace(0.5, 0.95, 10)]
COCO_REC_THRESHOLDS = [float(x) for x in np.linspace(0.0, 1.0, 101)]


def coco_map_metric(class_metrics: bool = True) -> MeanAveragePrecision:
    """torchmetrics' ``MeanAveragePrecision`` computing COCO's mAP exactly (xyxy boxes, COCO thresholds)."""
    return MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        backend="faster_coco_eval",
        class_metrics=class_metrics,
        iou_thresholds=COCO_IOU_THRESHOLDS,
        rec_thresholds=COCO_REC_THRESHOLDS,
    )


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


class DetectionEvaluator(nn.Module):
    """mAP, description accuracy and previews of one task's detections, per split.

    ``update(split, preds, gts)`` takes per image ``preds`` dicts with ``boxes`` ``(n, 4)`` xyxy pixels of the
    original image, ``scores`` ``(n,)``, ``labels`` ``(n,)`` and optionally ``desc`` (strings or indices), and
    ``gts`` dicts with ``boxes``, ``labels`` and optionally ``desc`` in the same frame. ``compute(split)``
    returns (and resets) ``map``, ``map_50``, ``map_75``, ``mar_1``, ``mar_10``, ``mar_100``,
    ``per_class_ap``, and with descriptions ``desc_acc`` and ``desc_matched``.

    Args:
        class_names: class names, for ``per_class_ap``.
        splits: the splits evaluated.
        num_previews: test images kept for :meth:`save_previews`.
    """

    def __init__(
        self, class_names: list[str], splits: tuple[str, ...] = ("val", "test"), num_previews: int = 8
    ):
        super().__init__()
        self.class_names = list(class_names)
        self.num_previews = int(num_previews)
        self.maps = nn.ModuleDict({s: coco_map_metric() for s in splits})
        self.counts = nn.ModuleDict({f"{s}_{k}": SumMetric() for s in splits for k in ("correct", "matched")})
        self.previews: list[dict[str, Any]] = []

    def update(self, split: str, preds: list[dict[str, Any]], gts: list[dict[str, Any]]) -> None:
        device = self.counts[f"{split}_correct"].device
        keys = ("boxes", "scores", "labels")
        self.maps[split].update(
            [{k: p[k].to(device) for k in keys} for p in preds],
            [{k: g[k].to(device) for k in ("boxes", "labels")} for g in gts],
        )
        if preds and "desc" in preds[0] and gts and "desc" in gts[0]:
            correct = matched = 0
            for p, g in zip(preds, gts):
                pairs = match_for_description(p["boxes"], p["scores"], g["boxes"])
                matched += len(pairs)
                correct += sum(int(p["desc"][i] == g["desc"][j]) for i, j in pairs)
            self.counts[f"{split}_correct"].update(torch.tensor(float(correct), device=device))
            self.counts[f"{split}_matched"].update(torch.tensor(float(matched), device=device))

    def compute(self, split: str, with_descriptions: bool = True) -> dict[str, Any]:
        metric = self.maps[split]
        result = metric.compute()
        metric.reset()
        correct = float(self.counts[f"{split}_correct"].compute())
        matched = float(self.counts[f"{split}_matched"].compute())
        for k in ("correct", "matched"):
            self.counts[f"{split}_{k}"].reset()
        out: dict[str, Any] = {k: float(result[k]) for k in MAP_KEYS}
        classes = result["classes"].flatten().tolist()
        per_class = result["map_per_class"].flatten().tolist()
        names = self.class_names
        out["per_class_ap"] = {names[c]: float(a) for c, a in zip(classes, per_class) if 0 <= c < len(names)}
        if with_descriptions:
            out["desc_acc"] = correct / matched if matched else 0.0
            out["desc_matched"] = int(matched)
        return out

    # ------------------------------------------------------------------ previews
    def keep_preview(
        self,
        image: torch.Tensor,
        gt_boxes: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[str],
        note: str = "",
    ) -> None:
        """Keep one image ``(3, H, W)`` (float in [0, 1] or uint8) with its ground-truth and predicted boxes
        (xyxy pixels of that image) and the predictions' labels, while fewer than ``num_previews`` are kept."""
        if len(self.previews) < self.num_previews:
            self.previews.append(
                {
                    "image": image.cpu(),
                    "gt": gt_boxes.cpu(),
                    "boxes": boxes.cpu(),
                    "labels": labels,
                    "note": note,
                }
            )

    def start_test(self) -> None:
        """Forget previews kept before (a test epoch keeps its own)."""
        self.previews = []

    def end_test(self, trainer: Any) -> None:
        """Draw the test epoch's previews into ``<run>/predictions`` (rank zero, when the run has a folder)."""
        if self.previews and trainer.is_global_zero and trainer.default_root_dir:
            self.save_previews(Path(trainer.default_root_dir) / "predictions")

    def save_previews(self, out_dir: Path, scale: int = 4) -> list[Path]:
        """Draw the kept images (upscaled ``scale`` x) into ``out_dir/test_*.png`` and forget them; the
        predictions' notes (e.g. a VLM's raw answers) go to ``out_dir/answers.txt``."""
        from transferkit.report.plots import draw_detections

        out_dir.mkdir(parents=True, exist_ok=True)
        paths, notes = [], []
        for i, p in enumerate(self.previews):
            path = out_dir / f"test_{i:02d}.png"
            draw_detections(p["image"], p["gt"], p["boxes"], p["labels"], path, scale=scale)
            paths.append(path)
            if p["note"]:
                notes.append(f"test_{i:02d}\n{p['note']}\n")
        if notes:
            (out_dir / "answers.txt").write_text("\n".join(notes), encoding="utf-8")
        self.previews = []
        log.info("drew %d test images with boxes into %s", len(paths), out_dir)
        return paths
