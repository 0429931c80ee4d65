"""Matplotlib helpers: figures through the object-oriented API on the Agg canvas (no pyplot state, no display).

Every plot of the evaluation and analysis suites is a PNG written atomically next to the JSON of its numbers.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from transferkit.utils.io import atomic_write_bytes

DPI = 120


def new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    """A figure attached to an Agg canvas (renders without a display or pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def class_colors(n: int) -> list:
    """``n`` distinguishable colours (tab10 / tab20, then a continuous map)."""
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]
