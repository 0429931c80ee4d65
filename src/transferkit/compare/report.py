"""The compare report: tables, plots and the Markdown/HTML report of a ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferkit.report import Report, Table, heatmap, params_m, percent, scatter


def results_table(results: dict[str, Any]) -> Table:
    """The main table: one row per backbone (accuracies as % top-1 on test)."""
    entries = results["backbones"]
    with_ft = any(e.get("finetune") for e in entries)
    columns = [
        "backbone",
        "modality",
        "pretrained",
        "params",
        "embed dim",
        "images/s",
        "linear top-1",
        "linear 95% CI",
        "kNN top-1",
    ]
    if with_ft:
        columns.append("fine-tune top-1")
    columns += ["best linear head", "best k"]
    rows = []
    for e in entries:
        head = e["linear"]["best_head"]
        row = {
            "backbone": e["name"],
            "modality": e["modality"],
            "pretrained": "yes" if e["pretrained"] else "no",
            "params": e["num_params"],
            "embed dim": e["embed_dim"],
            "images/s": e["throughput_img_s"],
            "linear top-1": e["linear"]["test_acc1"],
            "linear 95% CI": e["linear"].get("test_ci95"),
            "kNN top-1": e["knn"]["test_acc1"],
            "fine-tune top-1": e["finetune"]["test_acc1"] if e.get("finetune") else None,
            "best linear head": f"{head['variant']}, lr {head['lr']:g}",
            "best k": e["knn"]["best_k"],
        }
        rows.append(row)
    ds = results["dataset"]
    return Table(
        columns,
        rows,
        title=f"Backbones on {ds['name']} (test top-1 %, {ds['counts']['test']} images)",
        formats={
            "params": params_m,
            "images/s": ",.0f",
            "linear top-1": percent,
            "linear 95% CI": lambda ci: f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}",
            "kNN top-1": percent,
            "fine-tune top-1": percent,
        },
    )


def gains_table(results: dict[str, Any]) -> Table:
    rows = results["pretraining_gains"]
    cols = [
        "backbone",
        "random twin",
        "linear (pretrained)",
        "linear (random)",
        "linear gain",
        "linear p",
        "kNN gain",
        "kNN p",
    ]
    return Table(
        cols,
        [
            {
                "backbone": r["backbone"],
                "random twin": r["random_twin"],
                "linear (pretrained)": r["linear_pretrained"],
                "linear (random)": r["linear_random"],
                "linear gain": r["linear_gain"],
                "linear p": r.get("linear_p"),
                "kNN gain": r["knn_gain"],
                "kNN p": r.get("knn_p"),
            }
            for r in rows
        ],
        title="Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)",
        formats={
            "linear p": ".3g",
            "kNN p": ".3g",
            "linear (pretrained)": percent,
            "linear (random)": percent,
            "linear gain": lambda v: f"{100 * v:+.2f}",
            "kNN gain": lambda v: f"{100 * v:+.2f}",
        },
    )


def pairs_table(results: dict[str, Any]) -> Table:
    return Table(
        [
            "backbone",
            "params",
            "closest other-modality backbone",
            "its params",
            "size ratio",
            "linear delta",
            "kNN delta",
        ],
        [
            {
                "backbone": f"{r['backbone']} ({r['modality']})",
                "params": r["params"],
                "closest other-modality backbone": f"{r['partner']} ({r['partner_modality']})",
                "its params": r["partner_params"],
                "size ratio": r["size_ratio"],
                "linear delta": r["linear_delta"],
                "kNN delta": r["knn_delta"],
            }
            for r in results["fair_pairs"]
        ],
        title="Fair pairs: closest-size backbone of another modality (delta = backbone minus partner, points)",
        formats={
            "params": params_m,
            "its params": params_m,
            "size ratio": lambda v: f"{v:.2f}x",
            "linear delta": lambda v: f"{100 * v:+.2f}",
            "kNN delta": lambda v: f"{100 * v:+.2f}",
        },
    )


def knn_table(results: dict[str, Any]) -> Table:
    ks = sorted({int(k) for e in results["backbones"] for k in e["knn"]["acc1"]["val"]})
    rows = []
    for e in results["backbones"]:
        for split in ("val", "test"):
            accs = e["knn"]["acc1"][split]
            rows.append([e["name"], split, *[accs.get(str(k)) for k in ks]])
    cols = ["backbone", "split", *[f"k={k}" for k in ks]]
    return Table(
        cols,
        rows,
        title=f"kNN top-1 % by k (T = {results['protocol']['knn']['temperature']})",
        formats={c: percent for c in cols[2:]},
    )


def grid_table(results: dict[str, Any]) -> Table:
    """Per backbone and feature variant: the best LR and its val top-1."""
    rows = []
    for e in results["backbones"]:
        best_by_variant: dict[str, dict] = {}
        for h in e["linear"]["grid"]:
            cur = best_by_variant.get(h["variant"])
            if cur is None or h["val_acc1"] > cur["val_acc1"]:
                best_by_variant[h["variant"]] = h
        for v, h in best_by_variant.items():
            chosen = "yes" if h["name"] == e["linear"]["best_head"]["name"] else ""
            rows.append([e["name"], v, h["lr"], h["val_acc1"], chosen])
    return Table(
        ["backbone", "variant (pooling/blocks)", "best lr", "val top-1", "chosen"],
        rows,
        title="Linear-probe grid: best learning rate per feature variant (val top-1 %)",
        formats={"best lr": "g", "val top-1": percent},
    )


def make_plots(results: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    entries = results["backbones"]
    names = [e["name"] for e in entries]
    groups = [e["modality"] for e in entries]
    lin = [100 * e["linear"]["test_acc1"] for e in entries]
    ci = [(100 * e["linear"]["test_ci95"][0], 100 * e["linear"]["test_ci95"][1]) for e in entries]
    plots = {
        "acc_vs_params": scatter(
            [e["num_params"] / 1e6 for e in entries],
            lin,
            names,
            plot_dir / "acc_vs_params.png",
            xlabel="parameters (M)",
            ylabel="linear-probe test top-1 (%, 95% CI)",
            title="Accuracy vs parameters",
            groups=groups,
            intervals=ci,
            logx=True,
        ),
        "acc_vs_throughput": scatter(
            [e["throughput_img_s"] for e in entries],
            lin,
            names,
            plot_dir / "acc_vs_throughput.png",
            xlabel="feature extraction (images/s)",
            ylabel="linear-probe test top-1 (%, 95% CI)",
            title="Accuracy vs throughput",
            groups=groups,
            intervals=ci,
            logx=True,
        ),
        "per_class": heatmap(
            np.array([e["linear"]["per_class_acc"] for e in entries], dtype=float),
            names,
            results["dataset"]["class_names"],
            plot_dir / "per_class_accuracy.png",
            title="Per-class test accuracy of the best linear probe",
            xlabel="class",
            cbar_label="accuracy",
        ),
    }
    return plots


def _headline(results: dict[str, Any]) -> str:
    lines = []

    def verdict(gain: float, p: float | None) -> str:
        if p is None:
            return f"{100 * gain:+.2f} points"
        if p >= 0.05:
            return f"{100 * gain:+.2f} points, not significant (McNemar p = {p:.2g})"
        return f"{100 * gain:+.2f} points, pretraining {'helps' if gain > 0 else 'hurts'} (p = {p:.2g})"

    for g in results["pretraining_gains"]:
        lines.append(
            f"- **{g['backbone']}** vs its random-init twin: linear probe {percent(g['linear_pretrained'])}% vs "
            f"{percent(g['linear_random'])}% ({verdict(g['linear_gain'], g.get('linear_p'))}); kNN "
            f"{percent(g['knn_pretrained'])}% vs {percent(g['knn_random'])}% "
            f"({verdict(g['knn_gain'], g.get('knn_p'))})."
        )
    best = max(results["backbones"], key=lambda e: e["linear"]["test_acc1"])
    lines.append(
        f"- Best linear probe: **{best['name']}** ({percent(best['linear']['test_acc1'])}% test top-1, "
        f"{params_m(best['num_params'])} parameters)."
    )
    return "\n".join(lines)


def build_report(results: dict[str, Any], plots: dict[str, Path]) -> Report:
    """The compare report: summary, plots, details, protocol (one keyed section each)."""
    ds = results["dataset"]
    proto = results["protocol"]
    counts = ds["counts"]
    report = Report(
        f"Backbone comparison on {ds['name']}",
        meta=(
            f"{ds['num_classes']} classes, {counts['train']}/{counts['val']}/{counts['test']} train/val/test "
            f"images at {ds['image_size']}px; device {proto['device']}; seed {proto['seed']}; "
            f"dataset key {ds['key'][:12]}; {results['finished']}"
        ),
    )
    summary = report.section("summary", "Summary").add_text(_headline(results))
    if ds.get("test_is_val"):
        summary.add_text(
            "**Note:** this dataset has no separate test split; test numbers are on the val split."
        )
    summary.add_table(results_table(results), key="results")
    if results["pretraining_gains"]:
        summary.add_table(gains_table(results), key="gains")
    if results["fair_pairs"]:
        summary.add_table(pairs_table(results), key="fair_pairs")
    report.section("plots", "Plots").add_image(
        plots["acc_vs_params"], "Linear-probe accuracy vs parameter count"
    ).add_image(
        plots["acc_vs_throughput"], "Linear-probe accuracy vs feature-extraction throughput"
    ).add_image(plots["per_class"], "Per-class test accuracy of each backbone's best linear probe")
    details = report.section("details", "Details")
    details.add_table(grid_table(results), key="grid").add_table(knn_table(results), key="knn")
    probe, knn = proto["probe"], proto["knn"]
    method = [
        "Every backbone is frozen; its features are extracted once per split (no augmentation, eval transform) "
        "and cached on disk.",
        f"**Linear probe**: {len(probe['learning_rates'])} learning rates x poolings x last-k blocks "
        f"({', '.join(str(k) for k in probe['layers'])}) trained together for {probe['epochs']} epochs (SGD, "
        f"momentum 0.9, cosine schedule, batch {probe['batch_size']}, LR scaled by batch/256, features "
        "standardised with train statistics); the head with the best val top-1 is reported on test.",
        f"**kNN**: cosine similarity on L2-normalised final-layer features, votes exp(sim/{knn['temperature']}), "
        f"k in {knn['ks']}; k chosen on val, reported on test.",
        "**Throughput**: images/s of the extraction pass (batched, inference mode, data loading included, "
        "steady state after the first batch); figures read from the cache are marked in results.json.",
    ]
    if proto.get("finetune"):
        ft = proto["finetune"]
        method.append(
            f"**Fine-tune**: `transferkit fit` of the classification task, {ft['epochs']} epochs, AdamW blr "
            f"{ft['blr']:g}, layer decay {ft['layer_decay']}, label smoothing {ft['label_smoothing']}; the best "
            "checkpoint on val top-1 is reported on test (runs under `finetune/`)."
        )
    report.section("protocol", "Protocol").add_text("\n".join(f"- {m}" for m in method))
    return report
