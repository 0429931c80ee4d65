"""Figures of every report: matplotlib's object-oriented API on the Agg canvas (no pyplot state, no display),
PNGs written atomically. :func:`new_figure` / :func:`save_figure` are the one figure helper; :func:`scatter`
and :func:`heatmap` draw the comparison plots.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.utils.io import atomic_write_bytes

DPI = 120


def new_figure(width: float = 6.0, height: float = 4.5) -> Any:
    """A ``matplotlib.figure.Figure`` attached to an Agg canvas (renders without a display or pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def class_colors(n: int) -> list:
    """``n`` distinguishable colours (tab10 / tab20, then a continuous map)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def scatter(
    x: Sequence[float],
    y: Sequence[float] | dict[str, tuple[Sequence[float], Sequence[tuple[float, float]] | None]],
    labels: Sequence[str],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    groups: Sequence[str] | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
    logx: bool = False,
) -> Path:
    """Labelled points (one per backbone), coloured by ``groups`` (e.g. modality), e.g. accuracy vs params.

    ``intervals``: per-point ``(low, high)`` of y (e.g. a 95% confidence interval), drawn as error bars.
    ``y`` may also be ``{panel title: (y, intervals)}``: one panel each, side by side, sharing the x axis
    (e.g. linear probe and kNN).
    """
    panels = y if isinstance(y, dict) else {"": (y, intervals)}
    fig = new_figure(6.4 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
    groups = list(groups) if groups is not None else ["" for _ in labels]
    for ax, (panel, (ys_all, ints)) in zip(axes, panels.items()):
        _scatter_axis(ax, x, ys_all, labels, groups, ints, logx)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if panel:
            ax.set_title(panel)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _scatter_axis(ax: Any, x: Sequence[float], y: Sequence[float], labels: Sequence[str], groups: list[str],
                  intervals: Sequence[tuple[float, float]] | None, logx: bool) -> None:  # fmt: skip
    from matplotlib.ticker import FuncFormatter

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
    ax.grid(True, alpha=0.3)
    if any(groups):
        ax.legend(fontsize=8)


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
) -> Path:
    """A (rows x cols) heatmap, e.g. per-class accuracy (cols) of every backbone (rows)."""
    m = np.asarray(matrix, dtype=float)
    fig = new_figure(min(2.5 + 0.55 * m.shape[1], 20.0), min(1.2 + 0.45 * m.shape[0], 14.0))
    ax = fig.add_subplot()
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
    return save_figure(fig, path)


def draw_detections(
    image: Any,
    gt_boxes: Any,
    boxes: Any,
    labels: Sequence[str],
    path: str | Path,
    *,
    scale: int = 4,
) -> Path:
    """One image with ground-truth boxes (green inside a black outline: visible on any colour) and predicted
    boxes (red, each labelled on a filled tag), upscaled ``scale`` x, with a legend strip; PNG at ``path``.

    ``image``: ``(3, H, W)`` float in [0, 1] or uint8; boxes ``(n, 4)`` xyxy in the image's pixels.
    """
    import torch
    from PIL import Image, ImageDraw, ImageFont

    img = torch.as_tensor(image)
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).convert("RGB")
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    font_size = max(11, min(18, pil.width // 24))
    font = ImageFont.load_default(size=font_size)
    legend_h = font_size + 8
    canvas = Image.new("RGB", (pil.width, pil.height + legend_h), "white")
    canvas.paste(pil, (0, legend_h))
    draw = ImageDraw.Draw(canvas)

    def box(b: Sequence[float]) -> list[float]:
        x1, y1, x2, y2 = (float(v) * scale for v in b)
        return [x1, y1 + legend_h, x2, y2 + legend_h]

    for b in torch.as_tensor(gt_boxes).reshape(-1, 4).tolist():
        draw.rectangle(box(b), outline="black", width=4)
        draw.rectangle(box(b), outline=(0, 230, 0), width=2)
    for b, label in zip(torch.as_tensor(boxes).reshape(-1, 4).tolist(), labels):
        r = box(b)
        draw.rectangle(r, outline=(230, 0, 0), width=2)
        tx, ty = r[0], max(legend_h, r[1] - font_size - 4)
        tw = draw.textlength(label, font=font)
        draw.rectangle([tx, ty, tx + tw + 6, ty + font_size + 4], fill=(230, 0, 0))
        draw.text((tx + 3, ty + 1), label, fill="white", font=font)
    x = 4
    for color, text in (((0, 230, 0), "ground truth"), ((230, 0, 0), "prediction")):
        draw.rectangle([x, 4, x + font_size, 4 + font_size], outline="black", fill=color)
        draw.text((x + font_size + 4, 3), text, fill="black", font=font)
        x += int(font_size + 12 + draw.textlength(text, font=font))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
