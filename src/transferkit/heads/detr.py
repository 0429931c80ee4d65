"""A DETR-style detection head on backbone patch tokens.

Tokens of one or more backbone levels (prefix tokens dropped) are projected to the decoder width, get a
2-D sine position embedding of their patch grid (DETR's ``PositionEmbeddingSine``, normalised) and, with
several levels, a learned level embedding; a ``torch.nn.TransformerDecoder`` with learned object queries
cross-attends to them. Per query the head predicts:

- ``pred_logits`` ``(B, Q, C + 1)``: class logits, the last one "no object";
- ``pred_boxes`` ``(B, Q, 4)``: normalised cxcywh (sigmoid of a 3-layer MLP);
- ``pred_objectness`` ``(B, Q)``: objectness logit;
- ``pred_desc_logits`` ``(B, Q, V)``: logits over the description vocabulary (when ``num_descs > 0``);
- ``aux_outputs``: the same for every earlier decoder layer (auxiliary losses), when ``aux_loss``.

As in DETR, every layer's output goes through the decoder's final LayerNorm before the prediction heads,
which are shared across layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.grounding import boxes_from_model


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised 2-D sine embedding of an ``h x w`` grid -> ``(h * w, 2 * num_pos_feats)``, y half
    first, row-major (the order of flattened patch tokens)."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
        y = y / (h + eps) * self.scale
        x = x / (w + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
        return torch.cat((pos_y, pos_x), dim=-1).flatten(0, 1)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def infer_grid(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The ``(h, w)`` patch grid of ``num_tokens`` tokens of an ``height x width`` image (same aspect)."""
    h = max(1, round(math.sqrt(num_tokens * height / width)))
    w = num_tokens // h
    if h * w != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a patch grid of a {height}x{width} image")
    return h, w


class DetrHead(nn.Module):
    """Transformer decoder with learned object queries over backbone tokens (module docstring).

    Args:
        in_dims: token width of each backbone level used.
        num_classes: object classes ("no object" excluded).
        num_descs: size of the description vocabulary (0: no description head).
        hidden_dim: decoder width (a multiple of 4 and of ``nhead``).
        num_queries: object queries (the most objects one image can yield).
        num_layers: decoder layers.
        nhead: attention heads.
        dim_feedforward: width of the decoder MLPs.
        dropout: dropout inside the decoder.
        aux_loss: also return every earlier layer's predictions (``aux_outputs``).
        query_groups: training-only groups of ``num_queries`` queries each (Group DETR, Chen et al. 2023):
            queries attend only within their group and each group is matched one-to-one on its own, so
            every object supervises ``query_groups`` queries per step (faster convergence); inference uses
            the first group only. 1 = plain DETR.
        pos_temperature: temperature of the sine position embedding (DETR: 10000, for grids of tens of
            tokens a side and 128 features per axis; a small grid and width want a smaller one, e.g. 20, so
            that every frequency varies across the grid).
        pos_gain: factor on the position embedding added to the projected tokens (1 = DETR). Tokens leave the
            projection layer-normalised; a gain of about 2 makes position as loud as content, which lets the
            queries localise objects in far fewer steps on small grids.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        num_descs: int = 0,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 6,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        aux_loss: bool = True,
        query_groups: int = 1,
        pos_temperature: float = 10000.0,
        pos_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if hidden_dim % 4 or hidden_dim % nhead:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be a multiple of 4 and of nhead ({nhead})")
        self.num_classes = num_classes
        if query_groups < 1:
            raise ValueError(f"query_groups must be >= 1, got {query_groups}")
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.query_groups = query_groups
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden_dim), nn.LayerNorm(hidden_dim)) for d in in_dims
        )
        self.level_embed = nn.Parameter(torch.zeros(len(in_dims), hidden_dim)) if len(in_dims) > 1 else None
        self.pos_embed = PositionEmbeddingSine(hidden_dim // 2, temperature=pos_temperature)
        self.pos_gain = float(pos_gain)
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)
        layer = nn.TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(hidden_dim))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.objectness_embed = nn.Linear(hidden_dim, 1)
        self.desc_embed = nn.Linear(hidden_dim, num_descs) if num_descs > 0 else None
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed, std=0.02)

    def memory(self, levels: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Projected tokens + position (+ level) embeddings of all levels, concatenated: ``(B, sum N_l, D)``."""
        out = []
        for i, (tokens, (h, w)) in enumerate(zip(levels, grids)):
            pos = self.pos_embed(h, w, tokens.device).to(tokens.dtype)
            x = self.input_proj[i](tokens) + self.pos_gain * pos
            if self.level_embed is not None:
                x = x + self.level_embed[i]
            out.append(x)
        return torch.cat(out, dim=1)

    def _predict(self, hs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {
            "pred_logits": self.class_embed(hs),
            "pred_boxes": self.bbox_embed(hs).sigmoid(),
            "pred_objectness": self.objectness_embed(hs).squeeze(-1),
        }
        if self.desc_embed is not None:
            out["pred_desc_logits"] = self.desc_embed(hs)
        return out

    def forward(self, levels: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """``levels``: patch tokens ``(B, h_l * w_l, D_l)`` per level (no prefix tokens), row-major over the
        ``grids`` ``(h_l, w_l)``; returns the prediction dict of the module docstring. In training with
        ``query_groups = G > 1`` the query axis holds ``G * num_queries`` queries, group by group, and the
        dict has ``query_groups: G``."""
        memory = self.memory(levels, grids)
        groups = self.query_groups if self.training else 1
        nq = self.num_queries * groups
        x = self.query_embed.weight[:nq].unsqueeze(0).expand(memory.shape[0], -1, -1)
        mask = None
        if groups > 1:  # True = may not attend: queries see their own group only
            group = torch.arange(nq, device=x.device) // self.num_queries
            mask = group[:, None] != group[None, :]
        if not self.aux_loss:
            out = self._predict(self.decoder(x, memory, tgt_mask=mask))
        else:
            # the layers of the same TransformerDecoder, run one by one to keep every layer's output
            hs = []
            for layer in self.decoder.layers:
                x = layer(x, memory, tgt_mask=mask)
                hs.append(self.decoder.norm(x))
            out = self._predict(hs[-1])
            out["aux_outputs"] = [self._predict(h) for h in hs[:-1]]
        if groups > 1:
            out["query_groups"] = groups
        return out


@torch.no_grad()
def postprocess(
    outputs: dict[str, Any], sizes: torch.Tensor, score: str = "class"
) -> list[dict[str, torch.Tensor]]:
    """Raw outputs -> per-image detections in absolute pixel xyxy of images of ``sizes`` ``(B, 2)`` = (H, W).

    Each dict holds ``boxes`` ``(Q, 4)``, ``scores`` ``(Q,)``, ``labels`` ``(Q,)`` (best real class),
    ``objectness`` ``(Q,)`` in [0, 1] and, with a description head, ``desc`` ``(Q,)`` and ``desc_scores``;
    sorted by score, highest first. ``score``: ``class`` (DETR: the best real class's probability),
    ``objectness`` or ``class_x_objectness``.
    """
    prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    cls_scores, labels = prob.max(-1)
    objectness = outputs["pred_objectness"].float().sigmoid()
    if score == "class":
        scores = cls_scores
    elif score == "objectness":
        scores = objectness
    elif score == "class_x_objectness":
        scores = cls_scores * objectness
    else:
        raise ValueError(f"unknown score '{score}'; use class, objectness or class_x_objectness")
    boxes = boxes_from_model(outputs["pred_boxes"].float(), sizes)
    desc = outputs.get("pred_desc_logits")
    if desc is not None:
        desc_scores, desc_idx = desc.float().softmax(-1).max(-1)
    results = []
    for i in range(prob.shape[0]):
        order = scores[i].argsort(descending=True)
        r = {
            "boxes": boxes[i][order],
            "scores": scores[i][order],
            "labels": labels[i][order],
            "objectness": objectness[i][order],
        }
        if desc is not None:
            r["desc"] = desc_idx[i][order]
            r["desc_scores"] = desc_scores[i][order]
        results.append(r)
    return results
