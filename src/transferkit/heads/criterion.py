"""DETR's set criterion with a description term: named loss terms, a separate weight dict, aux losses.

``SetCriterion(outputs, targets)`` matches queries to targets with the injected matcher and returns a dict of
*unweighted* named terms (DESIGN.md convention 6):

- ``loss_ce``: cross-entropy over ``C + 1`` classes for every query, unmatched ones to "no object", whose
  weight is ``eos_coef`` (DETR: 0.1);
- ``loss_bbox``: L1 of matched normalised cxcywh boxes, ``loss_giou``: ``1 - GIoU``; both summed over matched
  pairs and divided by the number of target boxes (averaged over processes under DDP);
- ``loss_obj``: binary cross-entropy of the objectness logit (matched 1, others 0), averaged over queries;
- ``loss_desc``: cross-entropy of the description logits of matched queries (descriptions unseen in
  training, index ``-100``, are ignored);
- the same terms with a ``_{i}`` suffix for decoder layer ``i``'s auxiliary outputs (each re-matched);
- ``class_error`` and ``cardinality_error``: for logging only (no weight, no gradient).

``weight_dict`` maps a term name (without the ``_{i}`` suffix) to its weight; :meth:`SetCriterion.total`
sums the weighted terms.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from transferkit.heads.matcher import HungarianMatcher

DEFAULT_WEIGHTS: dict[str, float] = {
    "loss_ce": 1.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_obj": 1.0,
    "loss_desc": 1.0,
}
LOSSES = ("labels", "boxes", "objectness", "desc")
_AUX = re.compile(r"_\d+$")


class SetCriterion(nn.Module):
    """Loss of a DETR-style set prediction (see module docstring).

    Args:
        num_classes: object classes, "no object" excluded.
        matcher: module mapping ``(outputs, targets)`` to per-image ``(query_idx, target_idx)`` pairs.
        weight_dict: weight per term name; missing names take :data:`DEFAULT_WEIGHTS`.
        eos_coef: class weight of "no object" in ``loss_ce``.
        losses: which groups to compute: ``labels``, ``boxes``, ``objectness``, ``desc``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        weight_dict: dict[str, float] | None = None,
        eos_coef: float = 0.1,
        losses: tuple[str, ...] = LOSSES,
    ) -> None:
        super().__init__()
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown loss groups {sorted(unknown)}; known: {list(LOSSES)}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weight_dict = {**DEFAULT_WEIGHTS, **(weight_dict or {})}
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    # ------------------------------------------------------------------ terms
    @staticmethod
    def _src_idx(indices: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict:
        logits = outputs["pred_logits"].float()
        idx = self._src_idx(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[idx] = matched
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits))
        out = {"loss_ce": loss}
        with torch.no_grad():
            if matched.numel():
                acc = (logits[idx].argmax(-1) == matched).float().mean()
                out["class_error"] = 100.0 * (1.0 - acc)
            tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
            card = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
            out["cardinality_error"] = F.l1_loss(card.float(), tgt_lengths.float())
        return out

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict:
        idx = self._src_idx(indices)
        src = outputs["pred_boxes"][idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = generalized_box_iou(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def loss_objectness(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict:
        logits = outputs["pred_objectness"].float()
        target = torch.zeros_like(logits)
        target[self._src_idx(indices)] = 1.0
        return {"loss_obj": F.binary_cross_entropy_with_logits(logits, target)}

    def loss_desc(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict:
        logits = outputs.get("pred_desc_logits")
        if logits is None:
            return {}
        idx = self._src_idx(indices)
        src = logits[idx].float()
        tgt = torch.cat([t["desc"][j] for t, (_, j) in zip(targets, indices)]).to(src.device)
        if (tgt != -100).any():
            return {"loss_desc": F.cross_entropy(src, tgt, ignore_index=-100)}
        return {"loss_desc": src.sum() * 0.0}  # nothing to learn from, but keep every parameter in the graph

    # ------------------------------------------------------------------ forward
    def _num_boxes(self, targets: list[dict], device: torch.device) -> float:
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return max(float(n.item()), 1.0)

    def _terms(self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str = "") -> dict:
        indices = self.matcher(outputs, targets)
        fns = {
            "labels": self.loss_labels,
            "boxes": self.loss_boxes,
            "objectness": self.loss_objectness,
            "desc": self.loss_desc,
        }
        out: dict[str, torch.Tensor] = {}
        for name in self.losses:
            for k, v in fns[name](outputs, targets, indices, num_boxes).items():
                if suffix and k in ("class_error", "cardinality_error"):
                    continue  # logged for the last layer only
                out[k + suffix] = v
        return out

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms (module docstring).

        Args:
            outputs: ``pred_logits`` ``(B, Q, C + 1)``, ``pred_boxes`` ``(B, Q, 4)`` normalised cxcywh,
                ``pred_objectness`` ``(B, Q)`` logits, optional ``pred_desc_logits`` ``(B, Q, V)`` and
                ``aux_outputs`` (a list of such dicts, one per earlier decoder layer); with ``query_groups``
                ``G`` the query axis holds G groups, each matched on its own (terms averaged over groups).
            targets: B dicts with ``labels`` ``(n,)``, ``boxes`` ``(n, 4)`` normalised cxcywh, ``desc`` ``(n,)``.
        """
        device = outputs["pred_logits"].device
        num_boxes = self._num_boxes(targets, device)
        groups = int(outputs.get("query_groups", 1))
        layers = [{k: v for k, v in outputs.items() if k.startswith("pred_")}]
        layers += [
            {k: v for k, v in aux.items() if k.startswith("pred_")}
            for aux in outputs.get("aux_outputs") or []
        ]
        losses: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(layers):
            suffix = "" if i == 0 else f"_{i - 1}"
            # Group DETR: each query group is matched one-to-one on its own; terms are averaged over groups
            chunks = [
                dict(zip(layer, vals)) for vals in zip(*(v.chunk(groups, dim=1) for v in layer.values()))
            ]
            for chunk in chunks:
                for k, v in self._terms(chunk, targets, num_boxes, suffix).items():
                    losses[k] = losses[k] + v / groups if k in losses else v / groups
        return losses

    def weight_of(self, name: str) -> float:
        """The weight of a term (``loss_ce_2`` takes ``loss_ce``'s); 0 for logging-only terms."""
        return float(self.weight_dict.get(_AUX.sub("", name), 0.0))

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight_dict[name] * term)`` over the weighted terms."""
        terms = [self.weight_of(k) * v for k, v in losses.items() if self.weight_of(k) != 0.0]
        return torch.stack(terms).sum()
