"""Weights per layer: norms, change from the starting checkpoint, singular-value spectra.

For every weight matrix of the backbone and head (parameters with >= 2 dims; convolutions reshaped to
``(out, in * k * k)``), in layer order:

- ``norm``: Frobenius norm; ``rms``: norm / sqrt(numel);
- ``relative_change``: ``||W - W0||_F / ||W0||_F`` against the reference (the run's pretrained start,
  ``--reference``); ``cosine_to_start``: cosine similarity of the flattened tensors;
- ``top_singular_value``, ``stable_rank`` (``||W||_F^2 / sigma_max^2``) and ``effective_rank`` (exp of the
  entropy of the normalised singular values, Roy & Vetterli 2007), from ``torch.linalg.svdvals``.

Plots: norms and relative change per layer (``weights.png``) and the normalised spectra of the backbone's
matrices coloured by depth (``spectra.png``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transferkit.analysis.common import canonical_name, finish, output_dir, reference_backbone
from transferkit.report.plots import new_figure, save_figure
from transferkit.report.tables import markdown_table
from transferkit.runs import LoadedRun

MAX_SVD_SIDE = 4096  # larger matrices (vocabulary tables) get no spectrum


def matrix_stats(w: torch.Tensor) -> dict[str, Any]:
    """Norm and spectrum statistics of one weight tensor (>= 2-D)."""
    m = w.detach().float().reshape(w.shape[0], -1).cpu()
    norm = float(m.norm())
    out: dict[str, Any] = {"shape": list(w.shape), "norm": norm, "rms": norm / math.sqrt(m.numel())}
    if max(m.shape) <= MAX_SVD_SIDE:
        s = torch.linalg.svdvals(m)
        out["top_singular_value"] = float(s[0])
        out["stable_rank"] = float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0
        p = s / s.sum().clamp_min(1e-12)
        out["effective_rank"] = float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))
        out["spectrum"] = (s / s[0].clamp_min(1e-12)).tolist()
    return out


def layer_order(run: LoadedRun) -> dict[str, int]:
    """Backbone parameter name -> layer group index (head after the last group)."""
    groups = run.model.backbone.layer_groups()
    return {canonical_name(n): g for g, names in enumerate(groups) for n in names}


def analyze_weights(run: LoadedRun, *, reference: str | None = None) -> dict[str, Any]:
    """Per-layer weight statistics of ``run`` (see the module docstring)."""
    model = run.model
    order = layer_order(run)
    ref_bb, ref_note = reference_backbone(run, reference)
    ref_params = {canonical_name(n): p for n, p in ref_bb.named_parameters()} if ref_bb is not None else {}
    layers: list[dict[str, Any]] = []
    tensors = [
        (f"backbone.{canonical_name(n)}", canonical_name(n), p) for n, p in model.backbone.named_parameters()
    ]
    tensors += [(f"head.{n}", None, p) for n, p in model.head.named_parameters()]
    for full, bb_name, p in tensors:
        if p.ndim < 2 or "lora_" in full:
            continue
        row = {
            "name": full,
            "group": order.get(bb_name, len(order)) if bb_name else "head",
            "trainable": bool(p.requires_grad),
        }
        row.update(matrix_stats(p))
        ref = ref_params.get(bb_name) if bb_name else None
        if ref is not None and ref.shape == p.shape:
            a, b = p.detach().float().cpu().flatten(), ref.detach().float().cpu().flatten()
            row["relative_change"] = float((a - b).norm() / b.norm().clamp_min(1e-12))
            row["cosine_to_start"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        layers.append(row)
    out = output_dir(run, "weights")
    files = {
        "weights": _plot_norms(layers, out / "weights.png"),
        "spectra": _plot_spectra(layers, out / "spectra.png"),
    }
    changes = [r["relative_change"] for r in layers if "relative_change" in r]
    data = {
        "reference": ref_note,
        "layers": layers,
        "num_matrices": len(layers),
        "mean_relative_change": sum(changes) / len(changes) if changes else None,
        "max_relative_change": max(changes) if changes else None,
    }
    shown = layers if len(layers) <= 40 else layers[:: math.ceil(len(layers) / 40)]
    section = (
        f"{len(layers)} weight matrices. Reference: {ref_note}."
        + (
            f" Mean relative change {data['mean_relative_change']:.4f}, max {data['max_relative_change']:.4f}."
            if changes
            else ""
        )
        + "\n\n"
        + markdown_table(
            ["layer", "shape", "norm", "rel. change", "stable rank", "eff. rank"],
            [
                [
                    r["name"],
                    "x".join(map(str, r["shape"])),
                    r["norm"],
                    r.get("relative_change"),
                    r.get("stable_rank"),
                    r.get("effective_rank"),
                ]
                for r in shown
            ],
        )
    )
    return finish(run, "weights", data, files, section)


def _plot_norms(layers: list[dict[str, Any]], path) -> Any:
    fig = new_figure(max(7.0, 0.12 * len(layers) + 3), 6.0)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    x = list(range(len(layers)))
    ax1.bar(
        x,
        [r["rms"] for r in layers],
        color=["#4c72b0" if r["group"] != "head" else "#c44e52" for r in layers],
    )
    ax1.set_ylabel("RMS weight")
    ax1.set_title("weights per layer (input side left; head in red)")
    if any("relative_change" in r for r in layers):
        ax2.bar(x, [r.get("relative_change", 0.0) for r in layers], color="#55a868")
        ax2.set_ylabel("||W - W0|| / ||W0||")
    else:
        ax2.text(
            0.5,
            0.5,
            "no reference: change from the start unavailable",
            ha="center",
            va="center",
            transform=ax2.transAxes,
        )
    if len(layers) <= 60:
        ax2.set_xticks(
            x, labels=[r["name"].removeprefix("backbone.") for r in layers], rotation=90, fontsize=5
        )
    ax2.set_xlabel("weight matrix")
    return save_figure(fig, path)


def _plot_spectra(layers: list[dict[str, Any]], path) -> Any:
    from matplotlib import colormaps

    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    with_spec = [r for r in layers if "spectrum" in r]
    cmap = colormaps["viridis"]
    for i, r in enumerate(with_spec):
        s = r["spectrum"]
        ax.plot(
            [k / max(1, len(s) - 1) for k in range(len(s))],
            s,
            color=cmap(i / max(1, len(with_spec) - 1)),
            linewidth=0.8,
        )
    ax.set_yscale("log")
    ax.set_xlabel("singular value index (fraction of rank)")
    ax.set_ylabel("sigma / sigma_max")
    ax.set_title("singular-value spectra (dark = input side, yellow = output side)")
    return save_figure(fig, path)
