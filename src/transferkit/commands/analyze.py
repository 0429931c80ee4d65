"""``transferkit analyze <what> --run runs/<name>``: look inside a trained classification run.

``<what>``: ``features`` (PCA/t-SNE, linear separability), ``weights`` (norms, change from the start,
spectra), ``activations`` (per-block activation/gradient statistics, class heatmaps), ``attention`` (maps
overlaid on images), ``landscape`` (1-D/2-D loss landscape), or ``all``. Each writes
``runs/<name>/analysis/<what>/`` (PNGs + JSON) and links them from the run's ``report.md``/``report.html``.
"""

from __future__ import annotations

import logging
from typing import Any

from jsonargparse import ArgumentParser

from transferkit.errors import UserError
from transferkit.utils.console import make_console

log = logging.getLogger(__name__)

WHAT = ("features", "weights", "activations", "attention", "landscape", "all")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="transferkit analyze", description="Analyse a trained classification run.")
    parser.add_argument("what", type=str, help=f"one of {', '.join(WHAT)}")
    parser.add_argument("--run", type=str, required=True, help="run directory written by transferkit fit")
    parser.add_argument("--ckpt", type=str, default="best", help="best, last or a .ckpt path")
    parser.add_argument("--split", type=str | None, default=None, help="default: test (landscape: train)")
    parser.add_argument(
        "--num_images",
        type=int | None,
        default=None,
        help="images sampled (class-stratified); defaults: features 1000, activations 256, "
        "attention 8, landscape 256",
    )
    parser.add_argument(
        "--reference",
        type=str | None,
        default=None,
        help="features/weights: backbone name/dir or .ckpt to compare with (default: the run's "
        "pretrained starting point)",
    )
    parser.add_argument("--points", type=int, default=21, help="landscape: points of the 1-D curve")
    parser.add_argument("--grid", type=int, default=11, help="landscape: grid side of the 2-D surface")
    parser.add_argument(
        "--span", type=float, default=1.0, help="landscape: coordinates run over [-span, span]"
    )
    parser.add_argument(
        "--scope", type=str, default="trainable", help="landscape: trainable, all, head or backbone"
    )
    parser.add_argument("--dims", type=str, default="both", help="landscape: 1, 2 or both")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image sample and random directions")
    return parser


def run_analysis(what: str, run: Any, args: Any) -> dict[str, Any]:
    from transferkit import analysis

    n = args.num_images
    if what == "features":
        return analysis.analyze_features(
            run, split=args.split or "test", max_images=n or 1000, reference=args.reference, seed=args.seed
        )
    if what == "weights":
        return analysis.analyze_weights(run, reference=args.reference)
    if what == "activations":
        return analysis.analyze_activations(
            run, split=args.split or "test", max_images=n or 256, seed=args.seed
        )
    if what == "attention":
        return analysis.analyze_attention(run, split=args.split or "test", max_images=n or 8, seed=args.seed)
    return analysis.analyze_landscape(
        run,
        split=args.split or "train",
        max_images=n or 256,
        points=args.points,
        grid=args.grid,
        span=args.span,
        scope=args.scope,
        dims=args.dims,
        seed=args.seed,
    )


def summary(what: str, data: dict[str, Any]) -> str:
    if what == "features":
        t = data["trained"]
        s = f"linear separability {t['linear_separability']:.4f}, kNN {t['knn_accuracy']:.4f}, silhouette {t['silhouette']:.4f}"
        if "reference_separability" in data:
            r = data["reference_separability"]
            s += f" (reference: {r['linear_separability']:.4f}, {r['knn_accuracy']:.4f}, {r['silhouette']:.4f})"
        return s
    if what == "weights":
        ch = data["mean_relative_change"]
        return f"{data['num_matrices']} matrices; mean relative change " + (
            "n/a (" + data["reference"] + ")" if ch is None else f"{ch:.4f}"
        )
    if what == "activations":
        sel = [b.get("class_selectivity") or 0.0 for b in data["blocks"]]
        return (
            f"{len(data['blocks'])} blocks; class selectivity first/last block {sel[0]:.3f} / {sel[-1]:.3f}"
        )
    if what == "attention":
        d = [sum(b["mean_distance"]) / len(b["mean_distance"]) for b in data["blocks"]]
        return f"{data['num_blocks']} blocks x {data['num_heads']} heads; mean attention distance first/last block {d[0]:.1f} / {d[-1]:.1f} px"
    s = f"loss at the trained weights {data['center_loss']:.4f} (accuracy {data['center_accuracy']:.4f})"
    if "loss_increase_at_0.5" in data:
        s += f"; loss increase at |a|=0.5: {data['loss_increase_at_0.5']:.4f}"
    return s


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.what not in WHAT:
        raise UserError(f"unknown analysis '{args.what}'; choose one of {', '.join(WHAT)}")
    from rich.table import Table

    from transferkit.evaluation.run import open_run

    run = open_run(args.run, ckpt=args.ckpt, device=args.device)
    todo = [w for w in WHAT if w != "all"] if args.what == "all" else [args.what]
    table = Table(title=f"analysis of {run.name}")
    for col in ("analysis", "result", "files"):
        table.add_column(col)
    for what in todo:
        try:
            data = run_analysis(what, run, args)
        except UserError as e:
            if args.what != "all":
                raise
            log.warning("skipped %s: %s", what, e)  # e.g. attention on a CNN
            table.add_row(what, f"skipped: {e}", "")
            continue
        table.add_row(what, summary(what, data), "\n".join(data["files"].values()))
    make_console().print(table)
    make_console().print(f"report: {run.path / 'report.md'} (and report.html)")
    return 0
