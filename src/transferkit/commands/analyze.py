"""``transferkit analyze <what> --run runs/<name>``: look inside a trained classification run.

transferkit analyze features --run runs/ft
transferkit analyze all --run runs/ft --ckpt_path last
"""

from __future__ import annotations

import logging
from typing import Any, Literal

log = logging.getLogger(__name__)

WHAT = ("features", "weights", "activations", "attention", "landscape")


def analyze(
    what: Literal["features", "weights", "activations", "attention", "landscape", "all"],
    *,
    run: str,
    ckpt_path: str = "best",
    split: str | None = None,
    num_images: int | None = None,
    reference: str | None = None,
    points: int = 21,
    grid: int = 11,
    span: float = 1.0,
    scope: str = "trainable",
    dims: str = "both",
    device: str = "auto",
    seed: int = 0,
) -> int:
    """Analyse a trained classification run: features (PCA/t-SNE, linear separability), weights (norms, change
    from the start, spectra), activations (per-block statistics, class heatmaps), attention (maps on images),
    landscape (1-D/2-D loss landscape), or all. Each writes <run>/analysis/<what>/ (PNGs + JSON), its numbers
    under 'analysis' of the run's metrics.json and a section of its report.

    Args:
        what: features, weights, activations, attention, landscape or all.
        run: run directory written by transferkit fit.
        ckpt_path: best, last or a .ckpt path.
        split: default: test (landscape: train).
        num_images: images sampled (class-stratified); defaults: features 1000, activations 256, attention 8,
            landscape 256.
        reference: features/weights: backbone name/dir or .ckpt to compare with (default: the run's
            pretrained starting point).
        points: landscape: points of the 1-D curve.
        grid: landscape: grid side of the 2-D surface.
        span: landscape: coordinates run over [-span, span].
        scope: landscape: trainable, all, head or backbone.
        dims: landscape: 1, 2 or both.
        device: auto, cpu, cuda, cuda:N.
        seed: seed of the image sample and random directions.
    """
    from rich.table import Table

    from transferkit import analysis
    from transferkit.errors import UserError
    from transferkit.evaluation import load_classifier
    from transferkit.runs import RunDir
    from transferkit.utils.console import make_console

    loaded = load_classifier(run, ckpt_path=ckpt_path, device=device)
    RunDir.open(run).write_config(command="analyze")
    n = num_images
    calls: dict[str, Any] = {
        "features": lambda: analysis.analyze_features(
            loaded, split=split or "test", max_images=n or 1000, reference=reference, seed=seed
        ),
        "weights": lambda: analysis.analyze_weights(loaded, reference=reference),
        "activations": lambda: analysis.analyze_activations(
            loaded, split=split or "test", max_images=n or 256, seed=seed
        ),
        "attention": lambda: analysis.analyze_attention(
            loaded, split=split or "test", max_images=n or 8, seed=seed
        ),
        "landscape": lambda: analysis.analyze_landscape(
            loaded,
            split=split or "train",
            max_images=n or 256,
            points=points,
            grid=grid,
            span=span,
            scope=scope,
            dims=dims,
            seed=seed,
        ),  # fmt: skip
    }
    todo = list(WHAT) if what == "all" else [what]
    table = Table(title=f"analysis of {loaded.name}")
    for col in ("analysis", "result", "files"):
        table.add_column(col)
    for w in todo:
        try:
            data = calls[w]()
        except UserError as e:
            if what != "all":
                raise
            log.warning("skipped %s: %s", w, e)  # e.g. attention on a CNN
            table.add_row(w, f"skipped: {e}", "")
            continue
        table.add_row(w, analysis.summary(w, data), "\n".join(data["files"].values()))
    make_console().print(table)
    make_console().print(f"report: {loaded.path / 'report.md'} (and report.html)")
    return 0
