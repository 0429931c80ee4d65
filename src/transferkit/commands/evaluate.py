"""``transferkit evaluate --run runs/<name>``: full evaluation of a classification run.

Metrics (accuracy, balanced accuracy, macro/micro precision/recall/F1, ROC-AUC, AP, NLL, Brier, ECE), a
per-class table, confusion matrix, ROC/PR curves, reliability diagram and accuracy under common corruptions at
5 severities; written to ``runs/<name>/evaluation/`` and the run's ``report.md``/``report.html``.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

from transferkit.utils.console import make_console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="transferkit evaluate",
        description="Evaluate a classification run: metrics, curves, calibration, robustness to corruptions.",
    )
    parser.add_argument(
        "--run", type=str, required=True, help="run directory written by transferkit fit (runs/<name>)"
    )
    parser.add_argument("--ckpt", type=str, default="best", help="best, last or a .ckpt path")
    parser.add_argument("--split", type=str, default="test", help="split to evaluate: test, val or train")
    parser.add_argument(
        "--corruptions",
        type=str,
        default="all",
        help="comma-separated corruptions (gaussian_noise,gaussian_blur,jpeg,brightness,contrast,pixelate), all or none",
    )
    parser.add_argument(
        "--severities", type=list[int], default=[1, 2, 3, 4, 5], help="severities 1-5 to evaluate"
    )
    parser.add_argument(
        "--max_images",
        type=int | None,
        default=1000,
        help="images of the split used for robustness (None = all)",
    )
    parser.add_argument(
        "--batch_size", type=int | None, default=None, help="default: the run's eval batch size"
    )
    parser.add_argument(
        "--bins", type=int, default=15, help="confidence bins of ECE and the reliability diagram"
    )
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--no_cache", type=bool, default=False, help="recompute the predictions even if cached"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (noise)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rich.table import Table

    from transferkit.evaluation import evaluate_run

    result = evaluate_run(
        args.run,
        ckpt=args.ckpt,
        split=args.split,
        corruptions=args.corruptions,
        severities=args.severities,
        max_images=args.max_images,
        batch_size=args.batch_size,
        n_bins=args.bins,
        device=args.device,
        use_cache=not args.no_cache,
        seed=args.seed,
    )
    console = make_console()
    m = result["metrics"]
    table = Table(title=f"{result['run']}: {result['split']} ({m['num_samples']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "accuracy",
        "top5_accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "f1_micro",
        "roc_auc_ovr_macro",
        "average_precision_macro",
        "nll",
        "brier",
        "ece",
        "mce",
    ):
        value = m[key]
        table.add_row(key, "—" if value is None else f"{value:.4f}")
    console.print(table)
    per_class = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "ROC-AUC", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for r in result["per_class"]:
        per_class.add_row(
            r["class"],
            f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            f"{r['f1']:.3f}",
            "—" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}",
            str(r["support"]),
        )
    console.print(per_class)
    rob = result.get("robustness")
    if rob:
        sev = sorted(rob["mean_per_severity"], key=int)
        t = Table(title=f"accuracy under corruption ({rob['num_images']} images, clean {rob['clean']:.3f})")
        t.add_column("corruption")
        for s in sev:
            t.add_column(f"sev {s}", justify="right")
        for name, accs in rob["accuracy"].items():
            t.add_row(name, *[f"{accs[s]:.3f}" for s in sev])
        t.add_row("[bold]mean", *[f"[bold]{rob['mean_per_severity'][s]:.3f}" for s in sev])
        console.print(t)
    console.print(f"wrote {result['run']}/evaluation/ and report.md / report.html in {args.run}")
    return 0
