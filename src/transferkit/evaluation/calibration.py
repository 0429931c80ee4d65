"""Calibration: reliability-diagram bins and plot; the ECE/MCE of ``metrics.py`` are these bins' too.

Bins are ``n_bins`` equal-width confidence intervals ``(k/n, (k+1)/n]`` of the top-1 probability (Guo et al.
2017; a confidence of exactly 0 goes to the first bin); ECE is ``sum_b n_b / N |acc_b - conf_b|`` and MCE the
largest gap. torchmetrics' ``multiclass_calibration_error`` bins ``[k/n, (k+1)/n)`` with an extra bin for 1.0,
which moves confidences on a bin edge: transferkit uses one binning, this one, for the plot and the metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transferkit.report.plots import new_figure, save_figure


def reliability_bins(p: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (None for empty bins) of probabilities
    ``p`` (N, C) against ``labels`` (N,), plus the ``ece``/``mce`` these bins give."""
    conf, pred = p.float().max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    # bucketize(right=False) puts x in bin k when edges[k-1] < x <= edges[k]; bin 0 would be exactly 0
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins).float()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = counts > 0
    mean_conf = torch.where(nonempty, conf_sum / counts.clamp_min(1), torch.nan)
    mean_acc = torch.where(nonempty, acc_sum / counts.clamp_min(1), torch.nan)
    gaps = (mean_acc - mean_conf).abs()
    ece = float((counts[nonempty] / counts.sum() * gaps[nonempty]).sum())
    mce = float(gaps[nonempty].max()) if nonempty.any() else 0.0

    def clean(t: torch.Tensor) -> list[float | None]:
        return [None if v != v else float(v) for v in t.tolist()]

    return {
        "edges": edges.tolist(),
        "count": counts.long().tolist(),
        "confidence": clean(mean_conf),
        "accuracy": clean(mean_acc),
        "ece": ece,
        "mce": mce,
    }


def plot_reliability(bins: dict[str, Any], path: str | Path, title: str = "reliability diagram") -> Path:
    """Accuracy per confidence bin against the diagonal, gaps shaded, confidence histogram below."""
    fig = new_figure(5.5, 6.0)
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    edges = bins["edges"]
    width = edges[1] - edges[0]
    centers = [e + width / 2 for e in edges[:-1]]
    acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
    conf = [c if c is not None else 0.0 for c in bins["confidence"]]
    ax.bar(centers, acc, width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    gap_bottom = [min(a, c) for a, c in zip(acc, conf)]
    gap_height = [abs(a - c) if n else 0.0 for a, c, n in zip(acc, conf, bins["count"])]
    ax.bar(centers, gap_height, bottom=gap_bottom, width=width, color="#dd8452", alpha=0.6, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE {bins['ece']:.3f})")
    ax.legend(loc="upper left")
    hist.bar(centers, bins["count"], width=width, color="gray", edgecolor="black")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("count")
    hist.set_xlim(0, 1)
    return save_figure(fig, path)
