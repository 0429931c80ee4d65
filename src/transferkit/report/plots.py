"""Report plots (matplotlib, Agg backend, PNG files). Each function writes one figure and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    groups: Sequence[str] | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
    logx: bool = False,
    dpi: int = 120,
) -> Path:
    """Labelled points (one per backbone), coloured by ``groups`` (e.g. modality), e.g. accuracy vs params.

    ``intervals``: per-point ``(low, high)`` of y (e.g. a 95% confidence interval), drawn as error bars.
    """
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    groups = list(groups) if groups is not None else ["" for _ in labels]
    for g in dict.fromkeys(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        xs, ys = [x[i] for i in idx], [y[i] for i in idx]
        if intervals is not None:
            err = [
                [ys[j] - intervals[i][0] for j, i in enumerate(idx)],
                [intervals[i][1] - ys[j] for j, i in enumerate(idx)],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt="o", ms=7, capsize=3, label=g or None, zorder=3)
        else:
            ax.scatter(xs, ys, s=50, label=g or None, zorder=3)
    for xi, yi, lab in zip(x, y, labels):
        ax.annotate(lab, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.margins(x=0.15, y=0.1)
    if logx:
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(groups):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def heatmap(
    matrix: np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    cbar_label: str = "",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    annotate: bool = True,
    fmt: str = "{:.0%}",
    dpi: int = 120,
) -> Path:
    """A (rows x cols) heatmap, e.g. per-class accuracy (cols) of every backbone (rows)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.asarray(matrix, dtype=float)
    width = min(2.5 + 0.55 * m.shape[1], 20.0)
    height = min(1.2 + 0.45 * m.shape[0], 14.0)
    fig, ax = plt.subplots(figsize=(width, height))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(
        range(m.shape[1]), labels=list(col_labels), rotation=45 if m.shape[1] > 10 else 0, fontsize=8
    )
    ax.set_yticks(range(m.shape[0]), labels=list(row_labels), fontsize=8)
    if annotate and m.size <= 600:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    dark = m[i, j] < (0.5 * ((vmin or 0.0) + (vmax if vmax is not None else 1.0)))
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")  # fmt: skip
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    cbar = fig.colorbar(im, ax=ax)
    if cbar_label:
        cbar.set_label(cbar_label)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
