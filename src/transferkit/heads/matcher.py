"""Hungarian matching of predicted queries to ground-truth objects (DETR's ``HungarianMatcher``).

The cost of assigning query ``q`` to target ``t`` is

    cost_class * (-p_q[label_t]) + cost_bbox * L1(box_q, box_t) + cost_giou * (-GIoU(box_q, box_t))

(DETR approximates the class NLL by ``-p``, a constant shift away from ``1 - p``), with boxes normalised
cxcywh; scipy's ``linear_sum_assignment`` finds the minimum-cost one-to-one assignment, so each target gets
exactly one query (``min(Q, n)`` pairs) and the other queries are "no object".
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from transferkit.errors import UserError


class Matcher(nn.Module):
    """What a set criterion needs from a matcher (DESIGN.md convention 6), injectable by ``class_path``:
    ``forward(outputs, targets)`` returns, per image, ``(query_idx, target_idx)`` int64 tensors. A subclass
    records its init arguments in ``init_args`` so a checkpoint can rebuild it."""

    init_args: dict[str, Any]

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class HungarianMatcher(Matcher):
    """One-to-one assignment of queries to targets at minimum total cost.

    Args:
        cost_class: weight of the class cost ``-p[label]`` (>= 0).
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes (>= 0).
        cost_giou: weight of ``-GIoU`` between the boxes, computed in xyxy (>= 0).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        negative = {k: v for k, v in costs.items() if not v >= 0}
        if negative:
            raise UserError(f"matcher costs must be >= 0 (matcher.init_args.*), got {negative}")
        if not any(costs.values()):
            raise UserError(
                "matcher costs are all 0 (matcher.init_args.cost_class/cost_bbox/cost_giou): every "
                "assignment would cost the same; give at least one a positive weight (DETR: 1, 5, 2)"
            )
        self.init_args = {k: float(v) for k, v in costs.items()}
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    @torch.no_grad()
    def cost_matrix(
        self, logits: torch.Tensor, boxes: torch.Tensor, tgt_labels: torch.Tensor, tgt_boxes: torch.Tensor
    ) -> torch.Tensor:
        """Costs ``(Q, T)`` of queries vs targets.

        Args:
            logits: ``(Q, C + 1)`` class logits (the last class is "no object").
            boxes: ``(Q, 4)`` predicted boxes, normalised cxcywh.
            tgt_labels: ``(T,)`` int64 class indices.
            tgt_boxes: ``(T, 4)`` target boxes, normalised cxcywh.
        """
        prob = logits.float().softmax(-1)
        boxes, tgt_boxes = boxes.float(), tgt_boxes.float()
        cost_class = -prob[:, tgt_labels]
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        giou = generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class - self.cost_giou * giou

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            outputs: ``pred_logits`` ``(B, Q, C + 1)`` and ``pred_boxes`` ``(B, Q, 4)`` (normalised cxcywh).
            targets: B dicts with ``labels`` ``(n_i,)`` and ``boxes`` ``(n_i, 4)`` (normalised cxcywh).

        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 tensors of length ``min(Q, n_i)`` (empty for an image
            without objects), ``query_idx`` ascending.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, nq = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(bs)]
        # one cost matrix for the whole batch (queries of all images x targets of all images), then each
        # image solves its own block, as DETR does
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        cost = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), tgt_labels, tgt_boxes)
        cost = cost.view(bs, nq, -1).cpu()
        indices = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
