"""``transferkit evaluate --run runs/<name>``: full evaluation of a classification run.

transferkit evaluate --run runs/ft
transferkit evaluate --run runs/ft --ckpt_path last --split val --corruptions none
"""

from __future__ import annotations


def evaluate(
    *,
    run: str,
    ckpt_path: str = "best",
    split: str = "test",
    corruptions: str = "all",
    severities: list[int] = [1, 2, 3, 4, 5],
    max_images: int | None = 1000,
    batch_size: int | None = None,
    bins: int = 15,
    device: str = "auto",
    refresh_cache: bool = False,
    seed: int = 0,
) -> int:
    """Evaluate a classification run: metrics (accuracy, balanced accuracy, macro/micro precision/recall/F1,
    ROC-AUC, AP, NLL, Brier, ECE), a per-class table, confusion matrix, ROC/PR curves, reliability diagram and
    accuracy under common corruptions. Writes <run>/evaluation/, the summary under 'evaluation' of the run's
    metrics.json, config.evaluate.yaml and a section of its report.

    Args:
        run: run directory written by transferkit fit (runs/<name>).
        ckpt_path: best, last or a .ckpt path.
        split: split to evaluate: test, val or train.
        corruptions: comma-separated corruptions (gaussian_noise, gaussian_blur, jpeg, brightness, contrast,
            pixelate), all or none.
        severities: severities 1-5 to evaluate.
        max_images: images of the split used for robustness (None = all).
        batch_size: default: the run's eval batch size.
        bins: confidence bins of ECE and the reliability diagram.
        device: auto, cpu, cuda, cuda:N.
        refresh_cache: recompute the predictions even when cached.
        seed: seed of the random corruptions (noise).
    """
    from rich.table import Table

    from transferkit.evaluation import evaluate_run
    from transferkit.runs import RunDir
    from transferkit.utils.console import make_console

    result = evaluate_run(
        run,
        ckpt_path=ckpt_path,
        split=split,
        corruptions=corruptions,
        severities=severities,
        max_images=max_images,
        batch_size=batch_size,
        n_bins=bins,
        device=device,
        use_cache=not refresh_cache,
        seed=seed,
    )
    RunDir.open(run).write_config(command="evaluate")
    console = make_console()
    m = result["metrics"]
    table = Table(title=f"{result['run']}: {result['split']} ({m['num_samples']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "top5_accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "f1_micro", "roc_auc_ovr_macro", "average_precision_macro", "nll", "brier", "ece", "mce"):  # fmt: skip
        value = m[key]
        table.add_row(key, "—" if value is None else f"{value:.4f}")
    console.print(table)
    per_class = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "ROC-AUC", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for r in result["per_class"]:
        per_class.add_row(
            r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
            "—" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}", str(r["support"]),
        )  # fmt: skip
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
    console.print(f"wrote {run}/evaluation/, metrics.json and report.md / report.html in {run}")
    return 0
