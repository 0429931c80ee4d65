"""Attention maps of ViT-style and LM-as-vision backbones, overlaid on the images.

How the attention probabilities ``(B, heads, N, N)`` of every block are obtained:

- timm ViTs: the attention modules are switched from fused SDPA to their explicit path for one forward
  (``fused_attn = False``) and a forward hook on ``attn_drop`` reads its input, the post-softmax attention;
- Hugging Face vision encoders (DINOv2/v3, CLIP, SigLIP) and language-model backbones: the model is switched
  to ``attn_implementation="eager"`` for one forward with ``output_attentions=True`` (SDPA returns none).

CNNs (ResNets, ConvNeXts) have no attention: the analysis says so. Which query is shown: the CLS token for
backbones that pool it, the last token for causal language models (the token the pooling reads), otherwise
the mean over all queries. Maps: the last block's attention (mean over heads, and up to 4 single heads) and
the attention rollout over all blocks (Abnar & Zuidema 2020: product of ``0.5 A + 0.5 I``, heads averaged).

Numbers per block and head: ``entropy`` (mean over queries, nats) and ``mean_distance``: the attention-
weighted distance between query and key patches in pixels (Dosovitskiy et al. 2021, Fig. 7).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.analysis.common import finish, load_images, model_device, output_dir
from transferkit.backbones.base import Backbone
from transferkit.errors import UserError
from transferkit.report.plots import new_figure, save_figure
from transferkit.report.tables import markdown_table
from transferkit.runs import LoadedRun

MAX_HEADS_SHOWN = 4


@torch.no_grad()
def attention_maps(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of every block (:meth:`Backbone.attention_maps`): list of (B, heads, N, N).

    ``images`` (B, 3, H, W) in [0, 1]. Raises :class:`UserError` for backbones without attention (CNNs).
    """
    return backbone.attention_maps(images)


def query_index(backbone: Backbone) -> int | None:
    """Token whose attention is shown: 0 (CLS) for CLS-pooling backbones, -1 for last-token pooling, None
    (mean over queries) otherwise."""
    if backbone.pooling in ("cls", "cls+mean") and backbone.num_prefix_tokens > 0:
        return 0
    if backbone.pooling == "last":
        return -1
    return None


def patch_grid(num_tokens: int, num_prefix: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    n = num_tokens - num_prefix
    h, w = image_hw
    gh = round(math.sqrt(n * h / w))
    gw = n // max(gh, 1)
    if gh * gw != n:
        raise UserError(f"{n} patch tokens do not form a grid for {h}x{w} images")
    return gh, gw


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (B, N, N): product over blocks of the head-averaged attention mixed with identity."""
    result = None
    for a in attentions:
        m = a.mean(1)
        m = 0.5 * m + 0.5 * torch.eye(m.shape[-1], device=m.device)
        m = m / m.sum(-1, keepdim=True)
        result = m if result is None else m @ result
    return result


def head_statistics(
    attn: torch.Tensor, num_prefix: int, grid: tuple[int, int], patch_px: float
) -> dict[str, list[float]]:
    """Per head: mean entropy over queries and mean attention distance (pixels) between patch tokens."""
    ent = -(attn * attn.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 2))  # (heads,)
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], -1).float() * patch_px
    dist = torch.cdist(coords, coords).to(attn.device)  # (P, P)
    patch = attn[:, :, num_prefix:, num_prefix:]
    patch = patch / patch.sum(-1, keepdim=True).clamp_min(1e-12)
    mean_dist = (patch * dist).sum(-1).mean(dim=(0, 2))
    return {"entropy": ent.tolist(), "mean_distance": mean_dist.tolist()}


def _query_map(attn: torch.Tensor, q: int | None, num_prefix: int) -> torch.Tensor:
    """(B, [heads,] N, N) -> attention of the shown query to the patch tokens (B, [heads,] P)."""
    rows = attn.mean(-2) if q is None else attn[..., q, :]
    return rows[..., num_prefix:]


def analyze_attention(
    run: LoadedRun, *, split: str = "test", max_images: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Attention maps of ``run``'s backbone on a few ``split`` images (see the module docstring)."""
    backbone = run.model.backbone
    n_classes = len(run.class_names)
    images, labels = load_images(run, split, max(max_images, 1), seed)
    # one image per class first, so the grid shows different classes
    first: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        first.setdefault(c, i)
    order = list(first.values()) + [i for i in range(len(labels)) if i not in set(first.values())]
    images, labels = images[order][:max_images], labels[order][:max_images]
    device = model_device(backbone)
    attns = attention_maps(backbone, images.to(device))
    p = backbone.num_prefix_tokens
    n_tokens = attns[-1].shape[-1]
    grid = patch_grid(n_tokens, p, tuple(images.shape[-2:]))
    patch_px = images.shape[-1] / grid[1]
    q = query_index(backbone)
    stats = [head_statistics(a, p, grid, patch_px) for a in attns]
    last = _query_map(attns[-1], q, p)  # (B, heads, P)
    roll = _query_map(rollout(attns), q, p)  # (B, P)
    out = output_dir(run, "attention")
    files = {
        "attention_maps": _plot_maps(
            images, labels, run.class_names, last.cpu(), roll.cpu(), grid, out / "attention_maps.png"
        ),
        "attention_distance": _plot_distance(stats, out / "attention_distance.png"),
    }
    query = (
        {0: "CLS token", -1: "last token"}.get(q, "mean over queries")
        if q is not None
        else "mean over queries"
    )
    data = {
        "split": split,
        "num_images": int(len(labels)),
        "num_blocks": len(attns),
        "num_heads": int(attns[-1].shape[1]),
        "tokens": int(n_tokens),
        "prefix_tokens": int(p),
        "grid": list(grid),
        "query": query,
        "blocks": [{"block": i, **s} for i, s in enumerate(stats)],
        "classes_shown": [run.class_names[int(c)] for c in labels],
        "num_classes": n_classes,
    }
    section = (
        f"{len(attns)} blocks x {data['num_heads']} heads, {n_tokens} tokens ({p} prefix, {grid[0]}x{grid[1]} patches); "
        f"maps show the {query}'s attention to the patches.\n\n"
        + markdown_table(
            ["block", "mean entropy (nats)", "mean distance (px)", "min-max distance over heads (px)"],
            [
                [
                    i,
                    float(np.mean(s["entropy"])),
                    float(np.mean(s["mean_distance"])),
                    f"{min(s['mean_distance']):.1f}-{max(s['mean_distance']):.1f}",
                ]
                for i, s in enumerate(stats)
            ],
        )
    )
    return finish(run, "attention", data, files, section)


def _overlay(ax, image: torch.Tensor, heat: torch.Tensor, grid: tuple[int, int]) -> None:
    h, w = image.shape[-2:]
    m = heat.reshape(1, 1, *grid).float()
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.imshow(m.numpy(), cmap="jet", alpha=0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_maps(images, labels, class_names, last, roll, grid, path) -> Any:
    heads = min(MAX_HEADS_SHOWN, last.shape[1])
    cols = 3 + heads
    rows = len(images)
    fig = new_figure(1.5 * cols, 1.5 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    titles = ["image", "last block", "rollout", *[f"head {h}" for h in range(heads)]]
    for r in range(rows):
        ax = axes[r, 0]
        ax.imshow(images[r].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(class_names[int(labels[r])], fontsize=7)
        _overlay(axes[r, 1], images[r], last[r].mean(0), grid)
        _overlay(axes[r, 2], images[r], roll[r], grid)
        for h in range(heads):
            _overlay(axes[r, 3 + h], images[r], last[r, h], grid)
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=7)
    return save_figure(fig, path)


def _plot_distance(stats: list[dict[str, list[float]]], path) -> Any:
    fig = new_figure(5.5, 4.0)
    ax = fig.add_subplot()
    for i, s in enumerate(stats):
        ax.scatter([i] * len(s["mean_distance"]), s["mean_distance"], s=12, color="#4c72b0")
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title("attention distance per head")
    return save_figure(fig, path)
