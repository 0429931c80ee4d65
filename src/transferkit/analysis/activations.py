"""Activations and gradients per block, and per-class heatmaps of neuron activations.

On a class-stratified sample, forward hooks on every block of the backbone (the modules of
``layer_groups()``) record the block outputs; one backward pass of the cross-entropy loss (every backbone
parameter temporarily trainable, so frozen backbones are analysed too) records the gradient with respect
to each block output and each block's parameters. Per block:

- activations: ``mean``, ``std``, ``rms``, ``max_abs`` of the output tensor, ``token_similarity`` (mean cosine
  similarity between tokens of an image: near 1 means the tokens have collapsed to one vector);
- gradients: ``grad_rms`` of the output, ``param_grad_norm`` of the block's parameters;
- ``class_selectivity``: mean over channels of the F-ratio (between-class / within-class variance) of the
  image-level (token-averaged) activations — how much a block's neurons separate the classes.

Plots: ``stats.png`` (the numbers per block) and ``class_heatmaps.png`` (class x neuron mean activation,
z-scored per neuron, the most class-selective neurons of up to 8 blocks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.analysis.common import (
    finish,
    first_tensor,
    load_images,
    model_device,
    output_dir,
)
from transferkit.report.plots import new_figure, save_figure
from transferkit.report.tables import markdown_table
from transferkit.runs import LoadedRun

MAX_HEATMAP_BLOCKS = 8
HEATMAP_NEURONS = 48


def _image_level(t: torch.Tensor) -> torch.Tensor:
    """Block output -> (B, C): token mean of (B, N, D), spatial mean of (B, C, H, W)."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.flatten(1)


def _token_similarity(t: torch.Tensor) -> float | None:
    tokens = t.flatten(2).transpose(1, 2) if t.ndim == 4 else t
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        return None
    z = F.normalize(tokens.float(), dim=-1)
    sim = z @ z.transpose(1, 2)
    n = sim.shape[1]
    return float((sim.sum(dim=(1, 2)) - n).mean() / (n * (n - 1)))


def f_ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-column between-class / within-class variance ratio of x (N, C) for labels y (N,)."""
    classes = np.unique(y)
    mean = x.mean(0)
    between = sum((y == c).sum() * (x[y == c].mean(0) - mean) ** 2 for c in classes) / max(
        1, len(classes) - 1
    )
    within = sum(((x[y == c] - x[y == c].mean(0)) ** 2).sum(0) for c in classes) / max(
        1, len(y) - len(classes)
    )
    return between / np.maximum(within, 1e-12)


def analyze_activations(
    run: LoadedRun, *, split: str = "test", max_images: int | None = 256, seed: int = 0
) -> dict[str, Any]:
    """Activation and gradient statistics per block of ``run`` (see the module docstring)."""
    model = run.model
    backbone = model.backbone
    blocks = backbone.named_blocks()
    images, labels = load_images(run, split, max_images, seed)
    device = model_device(model)
    outputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(module, args, output):
            t = first_tensor(output)
            if t is None:
                return
            outputs[i] = t.detach()
            if t.requires_grad:
                t.register_hook(lambda g: grads.__setitem__(i, g.detach()))

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, (_, m) in enumerate(blocks)]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    stats = [
        dict(block=name, **{k: [] for k in ("mean", "std", "rms", "max_abs", "token_similarity", "grad_rms")})
        for name, _ in blocks
    ]
    pooled: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(blocks))}
    param_grad = [0.0] * len(blocks)
    try:
        model.eval()
        for p in backbone.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        bs = 64
        for start in range(0, len(images), bs):
            x, y = images[start : start + bs].to(device), labels[start : start + bs].to(device)
            outputs.clear()
            grads.clear()
            loss = F.cross_entropy(model(x), y, reduction="sum") / len(images)
            loss.backward()
            for i in range(len(blocks)):
                t = outputs.get(i)
                if t is None:
                    continue
                tf = t.float()
                stats[i]["mean"].append(float(tf.mean()))
                stats[i]["std"].append(float(tf.std()))
                stats[i]["rms"].append(float(tf.pow(2).mean().sqrt()))
                stats[i]["max_abs"].append(float(tf.abs().max()))
                stats[i]["token_similarity"].append(_token_similarity(tf))
                if i in grads:
                    stats[i]["grad_rms"].append(float(grads[i].float().pow(2).mean().sqrt()) * len(images))
                pooled[i].append(_image_level(tf).cpu())
        groups = backbone.layer_groups()[1:-1]
        params = dict(backbone.named_parameters())
        non_empty = [g for g in groups if g]
        for i, names in enumerate(non_empty[: len(blocks)]):
            sq = sum(
                float(params[n].grad.float().pow(2).sum())
                for n in names
                if n in params and params[n].grad is not None
            )
            param_grad[i] = math.sqrt(sq)
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    y_np = labels.numpy()
    rows: list[dict[str, Any]] = []
    heat: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, s in enumerate(stats):
        row: dict[str, Any] = {"block": s["block"], "index": i}
        for k in ("mean", "std", "rms", "max_abs", "token_similarity", "grad_rms"):
            vals = [v for v in s[k] if v is not None]
            row[k] = float(np.mean(vals)) if vals else None
        row["max_abs"] = max(s["max_abs"]) if s["max_abs"] else None
        row["param_grad_norm"] = param_grad[i]
        if pooled[i]:
            acts = torch.cat(pooled[i]).numpy()
            fr = f_ratio(acts, y_np)
            row["class_selectivity"] = float(np.mean(fr))
            row["num_neurons"] = int(acts.shape[1])
            top = np.argsort(-fr)[:HEATMAP_NEURONS]
            classes = np.unique(y_np)
            means = np.stack([acts[y_np == c][:, top].mean(0) for c in classes])
            heat.append((s["block"], means, classes))
        rows.append(row)
    out = output_dir(run, "activations")
    files = {
        "stats": _plot_stats(rows, out / "stats.png"),
        "class_heatmaps": _plot_heatmaps(heat, run.class_names, out / "class_heatmaps.png"),
    }
    data = {"split": split, "num_images": int(len(labels)), "blocks": rows}
    section = f"{len(rows)} blocks, {len(labels)} {split} images.\n\n" + markdown_table(
        [
            "block",
            "act. RMS",
            "act. max",
            "token sim.",
            "grad RMS (out)",
            "param grad norm",
            "class selectivity",
        ],
        [
            [
                r["block"],
                r["rms"],
                r["max_abs"],
                r["token_similarity"],
                r["grad_rms"],
                r["param_grad_norm"],
                r.get("class_selectivity"),
            ]
            for r in rows
        ],
    )
    return finish(run, "activations", data, files, section)


def _plot_stats(rows: list[dict[str, Any]], path) -> Any:
    fig = new_figure(9.0, 6.0)
    axes = fig.subplots(2, 2).ravel()
    x = list(range(len(rows)))
    for ax, (key, label) in zip(
        axes,
        [
            ("rms", "activation RMS"),
            ("grad_rms", "gradient RMS (block output)"),
            ("param_grad_norm", "parameter gradient norm"),
            ("class_selectivity", "class selectivity (mean F-ratio)"),
        ],
    ):
        vals = [r.get(key) if r.get(key) is not None else np.nan for r in rows]
        ax.plot(x, vals, marker="o")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("block")
        if key in ("grad_rms", "param_grad_norm") and np.nanmin(vals) > 0:
            ax.set_yscale("log")
    return save_figure(fig, path)


def _plot_heatmaps(heat: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str], path) -> Any:
    if len(heat) > MAX_HEATMAP_BLOCKS:
        pick = np.linspace(0, len(heat) - 1, MAX_HEATMAP_BLOCKS).round().astype(int)
        heat = [heat[i] for i in pick]
    cols = min(4, max(1, len(heat)))
    rows = max(1, math.ceil(len(heat) / cols))
    fig = new_figure(3.6 * cols, 2.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (name, means, classes) in zip(axes, heat):
        z = (means - means.mean(0)) / np.maximum(means.std(0), 1e-8)
        ax.imshow(z, aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("neuron (most class-selective)", fontsize=7)
        if len(classes) <= 20:
            ax.set_yticks(range(len(classes)), labels=[class_names[c] for c in classes], fontsize=6)
    for ax in axes[len(heat) :]:
        ax.axis("off")
    return save_figure(fig, path)
