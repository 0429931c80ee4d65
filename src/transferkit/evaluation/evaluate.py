"""Full evaluation of a classification run: metrics, per-class table, curves, calibration, robustness.

``evaluate_run(run_dir)`` predicts the split once (cached logits, see :mod:`transferkit.evaluation.run`) and
writes ``<run>/evaluation/``:

| file | content |
|---|---|
| ``metrics_<split>.json`` | summary metrics, per-class rows, confusion matrix, reliability bins, robustness |
| ``confusion_matrix.png`` | row-normalised confusion matrix (counts annotated up to 20 classes) |
| ``roc_curves.png`` / ``pr_curves.png`` | one-vs-rest ROC and precision-recall curves, micro average |
| ``reliability.png`` | reliability diagram with ECE |
| ``robustness.png`` / ``corruption_examples.png`` | accuracy vs severity per corruption; one image corrupted |
| ``predictions_<split>.npz`` | the cached logits and labels |

and a section of the run's ``report.md``/``report.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.evaluation.calibration import plot_reliability, reliability_bins
from transferkit.evaluation.corruptions import (
    RobustnessAccumulator,
    corrupt,
    resolve_corruptions,
    resolve_severities,
)
from transferkit.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    per_class_metrics,
    to_probs,
)
from transferkit.evaluation.run import iterate_split, load_classifier, predict_split, progress
from transferkit.report import Report, class_colors, markdown_table, new_figure, save_figure
from transferkit.runs import LoadedRun
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)

MAX_CURVE_CLASSES = 20


def plot_confusion(cm: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    c = cm.shape[0]
    norm = cm.float() / cm.sum(1, keepdim=True).clamp_min(1)
    size = min(14.0, 3.0 + 0.45 * c)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if c <= 30:
        ax.set_xticks(range(c), labels=class_names, rotation=90 if c > 10 else 0)
        ax.set_yticks(range(c), labels=class_names)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def _curves(p: torch.Tensor, labels: torch.Tensor, kind: str) -> dict[str, Any]:
    """Per-class one-vs-rest ROC or PR curves (sklearn), plus the micro average."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    c = p.shape[1]
    y = np.eye(c, dtype=np.int64)[labels.numpy()]
    scores = p.numpy()
    out: dict[str, Any] = {}
    for i in list(range(c)) + ["micro"]:
        yt, ys = (y.ravel(), scores.ravel()) if i == "micro" else (y[:, i], scores[:, i])
        if yt.min() == yt.max():
            continue  # no positive (or no negative) sample: no curve
        if kind == "roc":
            fpr, tpr, _ = roc_curve(yt, ys)
            out[str(i)] = {"x": fpr, "y": tpr, "area": float(auc(fpr, tpr))}
        else:
            prec, rec, _ = precision_recall_curve(yt, ys)
            out[str(i)] = {"x": rec, "y": prec, "area": float(average_precision_score(yt, ys))}
    return out


def plot_curves(curves: dict[str, Any], class_names: list[str], kind: str, path: Path, title: str) -> Path:
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    per_class = [k for k in curves if k != "micro"]
    colors = class_colors(len(class_names))
    if len(class_names) <= MAX_CURVE_CLASSES:
        for k in per_class:
            cv = curves[k]
            ax.plot(
                cv["x"],
                cv["y"],
                color=colors[int(k)],
                linewidth=1,
                label=f"{class_names[int(k)]} ({cv['area']:.3f})",
            )
    if "micro" in curves:
        cv = curves["micro"]
        ax.plot(
            cv["x"],
            cv["y"],
            color="black",
            linewidth=2.2,
            linestyle="--",
            label=f"micro avg ({cv['area']:.3f})",
        )
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(
        fontsize=7, loc="lower right" if kind == "roc" else "lower left", ncol=2 if len(per_class) > 10 else 1
    )
    return save_figure(fig, path)


def plot_robustness(result: dict[str, Any], path: Path, title: str) -> Path:
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    sev = sorted(int(s) for s in result["mean_per_severity"])
    xs = [0, *sev]
    for name, accs in result["accuracy"].items():
        ax.plot(
            xs,
            [result["clean"], *[accs[str(s)] for s in sev]],
            marker="o",
            linewidth=1,
            markersize=3,
            label=name,
        )
    ax.plot(
        xs,
        [result["clean"], *[result["mean_per_severity"][str(s)] for s in sev]],
        color="black",
        linewidth=2.5,
        marker="s",
        label="mean",
    )
    ax.set_xticks(xs, labels=["clean", *[str(s) for s in sev]])
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_corruption_examples(
    image: torch.Tensor, corruptions: list[str], severities: list[int], path: Path
) -> Path:
    """One image (3, H, W) under every corruption (rows) and severity (columns)."""
    rows, cols = len(corruptions), len(severities) + 1
    fig = new_figure(1.3 * cols, 1.3 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, name in enumerate(corruptions):
        for c in range(cols):
            ax = axes[r, c]
            x = image[None] if c == 0 else corrupt(image[None], name, severities[c - 1], seed=c)
            ax.imshow(x[0].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {severities[c - 1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    return save_figure(fig, path)


@torch.inference_mode()
def robustness(
    run: LoadedRun,
    split: str,
    corruptions: list[str],
    severities: list[int],
    clean_accuracy: float,
    *,
    batch_size: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of the run's model on ``split`` under every corruption and severity (one pass over the data,
    each batch loaded once). The clean accuracy of the same subset is recomputed when ``max_images`` limits it."""
    device = next(run.model.parameters()).device
    acc = RobustnessAccumulator(corruptions, severities, seed=seed)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return run.model(x.to(device)).float()

    clean_correct, n = 0, 0
    total = len(run.datamodule.dataset(split))
    if max_images is not None:
        total = min(total, max_images)
    bs = batch_size or run.datamodule.eval_batch_size
    with progress("corruptions") as bar:
        task = bar.add_task(
            f"{len(corruptions)} corruptions x {len(severities)} severities", total=-(-total // bs)
        )
        for images, labels in iterate_split(run, split, batch_size, max_images):
            if max_images is not None:
                clean_correct += int((predict(images).argmax(-1).cpu() == labels).sum())
                n += int(labels.numel())
            acc.update(images, labels, lambda x: predict(x).cpu())
            bar.advance(task)
    clean = clean_correct / n if max_images is not None and n else clean_accuracy
    return acc.result(clean)


def evaluate_run(
    run_dir: str | Path,
    *,
    ckpt_path: str = "best",
    split: str = "test",
    corruptions: str | list[str] | None = "all",
    severities: list[int] | None = None,
    max_images: int | None = 1000,
    batch_size: int | None = None,
    n_bins: int = 15,
    device: str = "auto",
    use_cache: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on ``split``: writes ``<run>/evaluation/`` (``metrics_<split>.json``, plots), the
    summary under ``evaluation.<split>`` of the run's ``metrics.json`` and the report section. Returns the JSON
    written to ``metrics_<split>.json``."""
    names = resolve_corruptions(corruptions)
    sev = resolve_severities(severities)
    run = load_classifier(run_dir, ckpt_path=ckpt_path, device=device)
    out_dir = run.path / "evaluation"
    logits, labels = predict_split(run, split, batch_size=batch_size, use_cache=use_cache)
    class_names = run.class_names
    p = to_probs(logits)
    summary = classification_metrics(logits, labels, n_bins=n_bins)
    rows = per_class_metrics(logits, labels, class_names)
    cm = confusion_matrix(logits, labels)
    bins = reliability_bins(p, labels, n_bins=n_bins)
    roc = _curves(p, labels, "roc")
    pr = _curves(p, labels, "pr")
    files = {
        "confusion_matrix": plot_confusion(
            cm, class_names, out_dir / "confusion_matrix.png", f"{run.name}: {split}"
        ),
        "roc_curves": plot_curves(roc, class_names, "roc", out_dir / "roc_curves.png", "ROC (one-vs-rest)"),
        "pr_curves": plot_curves(
            pr, class_names, "pr", out_dir / "pr_curves.png", "precision-recall (one-vs-rest)"
        ),
        "reliability": plot_reliability(bins, out_dir / "reliability.png"),
    }
    result: dict[str, Any] = {
        "run": run.name,
        "checkpoint": str(run.checkpoint),
        "split": split,
        "metrics": summary,
        "per_class": rows,
        "confusion_matrix": cm.tolist(),
        "reliability": bins,
        "roc_auc_micro": roc.get("micro", {}).get("area"),
        "average_precision_micro": pr.get("micro", {}).get("area"),
    }
    if names:
        rob = robustness(
            run,
            split,
            names,
            sev,
            summary["accuracy"],
            batch_size=batch_size,
            max_images=max_images,
            seed=seed,
        )
        result["robustness"] = rob
        files["robustness"] = plot_robustness(
            rob, out_dir / "robustness.png", f"{run.name}: accuracy under corruption"
        )
        first_image = run.datamodule.dataset(split)[0][0]
        files["corruption_examples"] = plot_corruption_examples(
            first_image, names, sev, out_dir / "corruption_examples.png"
        )
    result["files"] = {k: str(v.relative_to(run.path)) for k, v in files.items()}
    atomic_write_json(out_dir / f"metrics_{split}.json", result)
    summary_metrics = {**summary, "checkpoint": run.checkpoint.name}
    if "robustness" in result:
        rob = result["robustness"]
        summary_metrics["robustness"] = {
            k: rob[k] for k in ("clean", "mean_corrupted", "relative_robustness", "mean_per_severity")
        }
    run.run.update_metrics({"evaluation": {split: summary_metrics}})
    report = Report(f"Run `{run.name}`")
    report.section(f"evaluation-{split}").add_text(report_section(result))
    report.write(run.path)
    log.info(
        "wrote %s and the report section of %s", out_dir / f"metrics_{split}.json", run.path / "report.md"
    )
    return result


def report_section(result: dict[str, Any]) -> str:
    m = result["metrics"]
    split = result["split"]
    lines = [
        f"## Evaluation on {split} (`{Path(result['checkpoint']).name}`)",
        "",
        f"{m['num_samples']} images, {m['num_classes']} classes. JSON: `evaluation/metrics_{split}.json`.",
        "",
        markdown_table(
            ["metric", "value"],
            [
                ["accuracy (top-1)", m["accuracy"]],
                ["top-5 accuracy", m["top5_accuracy"]],
                ["balanced accuracy", m["balanced_accuracy"]],
                ["precision macro / micro", f"{m['precision_macro']:.4f} / {m['precision_micro']:.4f}"],
                ["recall macro / micro", f"{m['recall_macro']:.4f} / {m['recall_micro']:.4f}"],
                ["F1 macro / micro", f"{m['f1_macro']:.4f} / {m['f1_micro']:.4f}"],
                ["ROC-AUC (OvR, macro)", m["roc_auc_ovr_macro"]],
                ["average precision (macro)", m["average_precision_macro"]],
                ["NLL", m["nll"]],
                ["Brier score", m["brier"]],
                ["ECE / MCE (15 bins)", f"{m['ece']:.4f} / {m['mce']:.4f}"],
            ],
        ),
        "",
        "### Per class",
        "",
        markdown_table(
            ["class", "precision", "recall", "F1", "ROC-AUC", "AP", "support"],
            [
                [
                    r["class"],
                    r["precision"],
                    r["recall"],
                    r["f1"],
                    r["roc_auc"],
                    r["average_precision"],
                    r["support"],
                ]
                for r in result["per_class"]
            ],
        ),
        "",
        f"![confusion matrix]({result['files']['confusion_matrix']})",
        f"![ROC curves]({result['files']['roc_curves']}) ![PR curves]({result['files']['pr_curves']})",
        f"![reliability diagram]({result['files']['reliability']})",
    ]
    rob = result.get("robustness")
    if rob:
        sev = sorted(rob["mean_per_severity"], key=int)
        lines += [
            "",
            f"### Robustness to common corruptions ({rob['num_images']} images)",
            "",
            markdown_table(
                ["corruption", *[f"sev {s}" for s in sev], "mean"],
                [
                    [name, *[accs[s] for s in sev], sum(accs.values()) / len(accs)]
                    for name, accs in rob["accuracy"].items()
                ]
                + [["**mean**", *[rob["mean_per_severity"][s] for s in sev], rob["mean_corrupted"]]],
            ),
            "",
            f"Clean accuracy {rob['clean']:.4f}; mean corrupted accuracy {rob['mean_corrupted']:.4f} "
            f"(relative robustness {rob['relative_robustness'] or 0:.3f}).",
            "",
            f"![robustness]({result['files']['robustness']}) ![corruption examples]({result['files']['corruption_examples']})",
        ]
    return "\n".join(lines)
