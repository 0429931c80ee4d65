"""The compare report: tables, plots and the Markdown/HTML report of a ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferkit.compare.stats import leaders
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
        *(["logreg top-1"] if any(e.get("logreg") for e in entries) else []),
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
            "images/s": _speed(e),
            "linear top-1": e["linear"]["test_acc1"],
            "linear 95% CI": e["linear"].get("test_ci95"),
            "logreg top-1": e["logreg"]["test_acc1"] if e.get("logreg") else None,
            "kNN top-1": e["knn"]["test_acc1"],
            "fine-tune top-1": e["finetune"]["test_acc1"] if e.get("finetune") else None,
            "best linear head": f"{head['variant']}, lr {head['lr']:g}"
            + (f", wd {head['weight_decay']:g}" if head.get("weight_decay") else ""),
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
            "logreg top-1": percent,
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
                "closest other-modality backbone": f"{r['partner']} ({r['partner_modality']})"
                + ("" if r.get("fair", True) else ": no fair partner, too far in size"),
                "its params": r["partner_params"],
                "size ratio": r["size_ratio"],
                "linear delta": r["linear_delta"],
                "kNN delta": r["knn_delta"],
            }
            for r in results["fair_pairs"]
        ],
        title=(
            "Fair pairs: closest-size backbone of another modality within "
            f"{results['protocol'].get('fair_max_ratio', 4.0):g}x (delta = backbone minus partner, points)"
        ),
        formats={
            "params": params_m,
            "its params": params_m,
            "size ratio": lambda v: f"{v:.2f}x",
            "linear delta": lambda v: f"{100 * v:+.2f}" if v is not None else "-",
            "kNN delta": lambda v: f"{100 * v:+.2f}" if v is not None else "-",
        },
    )


def pairwise_table(results: dict[str, Any]) -> Table:
    """Every pair of backbones: test top-1 differences and McNemar p, linear probe and kNN."""
    by_pair: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results["pairwise"]:
        row = by_pair.setdefault((r["a"], r["b"]), {"a": r["a"], "b": r["b"]})
        row[f"{r['protocol']} delta"] = r["delta"]
        row[f"{r['protocol']} p"] = r["p"]
    cols = ["a", "b", "linear delta", "linear p", "knn delta", "knn p"]
    return Table(
        cols,
        list(by_pair.values()),
        title="Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)",
        formats={
            "linear delta": lambda v: f"{100 * v:+.2f}",
            "knn delta": lambda v: f"{100 * v:+.2f}",
            "linear p": ".3g",
            "knn p": ".3g",
        },
    )


def seeds_table(results: dict[str, Any]) -> Table:
    """Mean and spread of test top-1 over the run's seeds."""
    rows = []
    for e in results["backbones"]:
        sd = e.get("seeds")
        if not sd:
            continue
        rows.append(
            {
                "backbone": e["name"],
                "seeds": len(sd["seeds"]),
                "linear mean": sd["linear"]["mean"],
                "linear sd": sd["linear"]["std"],
                "linear range": (sd["linear"]["min"], sd["linear"]["max"]),
                "kNN mean": sd["knn"]["mean"],
                "kNN sd": sd["knn"]["std"],
                "kNN range": (sd["knn"]["min"], sd["knn"]["max"]),
            }
        )
    span = lambda v: f"{100 * v[0]:.2f}-{100 * v[1]:.2f}"  # noqa: E731
    points = lambda v: f"{100 * v:.2f}"  # noqa: E731
    return Table(
        list(rows[0]),
        rows,
        title="Over seeds: test top-1 % (mean, sample sd, range); random inits, heads and batch order vary",
        formats={
            "linear mean": percent,
            "kNN mean": percent,
            "linear sd": points,
            "kNN sd": points,
            "linear range": span,
            "kNN range": span,
        },  # fmt: skip
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
    panels = {}
    for protocol, label in (("linear", "linear probe"), ("knn", "kNN")):
        acc = [100 * e[protocol]["test_acc1"] for e in entries]
        ci = [(100 * e[protocol]["test_ci95"][0], 100 * e[protocol]["test_ci95"][1]) for e in entries]
        panels[label] = (acc, ci)
    plots = {
        "acc_vs_params": scatter(
            [e["num_params"] / 1e6 for e in entries],
            panels,
            names,
            plot_dir / "acc_vs_params.png",
            xlabel="parameters (M)",
            ylabel="test top-1 (%, 95% CI)",
            title="Accuracy vs parameters",
            groups=groups,
            logx=True,
        ),
        "acc_vs_throughput": scatter(
            [e["throughput_img_s"] for e in entries],
            panels,
            names,
            plot_dir / "acc_vs_throughput.png",
            xlabel="forward pass (images/s)",
            ylabel="test top-1 (%, 95% CI)",
            title="Accuracy vs throughput",
            groups=groups,
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
    entries = {e["name"]: e for e in results["backbones"]}
    for protocol, label, title in (("linear", "linear probe", "Linear probe"), ("knn", "kNN", "kNN")):
        if len(entries) < 2:
            break
        lead = leaders(results["backbones"], results.get("pairwise", []), protocol)
        best = entries[lead["best"]]
        acc = f"{percent(best[protocol]['test_acc1'])}%"
        if lead["ties"]:
            others = ", ".join(
                f"{n} ({percent(entries[n][protocol]['test_acc1'])}%, p = {p:.2g})" for n, p in lead["ties"]
            )
            lines.append(
                f"- {title}: no significant difference between **{best['name']}** ({acc}) and "
                f"{others} (exact McNemar, alpha 0.05)."
            )
        else:
            worst_p = max((r["p"] for r in results.get("pairwise", []) if r["protocol"] == protocol
                           and best["name"] in (r["a"], r["b"])), default=None)  # fmt: skip
            lines.append(
                f"- Best {label}: **{best['name']}** ({acc} test top-1, {params_m(best['num_params'])} parameters), "
                f"ahead of every other backbone (McNemar p <= {worst_p:.2g})."
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
    if results.get("pairwise"):
        summary.add_table(pairwise_table(results), key="pairwise")
    if any(e.get("seeds") for e in results["backbones"]):
        summary.add_table(seeds_table(results), key="seeds")
    if results["fair_pairs"]:
        summary.add_table(pairs_table(results), key="fair_pairs")
    report.section("plots", "Plots").add_image(
        plots["acc_vs_params"], "Test accuracy vs parameter count: linear probe and kNN"
    ).add_image(
        plots["acc_vs_throughput"], "Test accuracy vs forward throughput: linear probe and kNN"
    ).add_image(plots["per_class"], "Per-class test accuracy of each backbone's best linear probe")
    details = report.section("details", "Details")
    details.add_table(grid_table(results), key="grid").add_table(knn_table(results), key="knn")
    probe, knn = proto["probe"], proto["knn"]
    n_decays = len(probe.get("weight_decays", [0.0]))  # results of versions before the decay axis lack it
    method = [
        "Every backbone is frozen; its features are extracted once per split (no augmentation, eval transform) "
        "and cached on disk.",
        f"**Linear probe**: {len(probe['learning_rates'])} learning rates x {n_decays} weight "
        f"decays x poolings x last-k blocks ({', '.join(str(k) for k in probe['layers'])}) trained together for "
        f"{probe['epochs']} epochs (SGD, momentum 0.9, cosine schedule, batch {probe['batch_size']}, LR scaled by "
        f"batch/256, features standardised with train statistics, {probe.get('precision', 'float32')} matmuls); "
        "the head with the best val top-1 is reported on test.",
        "**Logistic regression** (DINOv2's protocol): L-BFGS on the standardised features of the variant the grid "
        "chose, C = 10^p for 45 powers p from -6 to 5, swept on train, chosen on val, reported on test.",
        f"**kNN**: cosine similarity on L2-normalised final-layer features, votes exp(sim/{knn['temperature']}), "
        f"k in {knn['ks']}; k chosen on val, reported on test.",
        "**Throughput**: images/s of the backbone's forward pass on one batch of test images, timed in this "
        "run (2 warm-up calls, median of 5; the spread, threads and load average are in results.json).",
        "**Tests**: exact McNemar tests on the same test images, per pair of backbones (uncorrected for the "
        "number of pairs); a backbone is called best only when every other is significantly behind it.",
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


def _speed(entry: dict[str, Any]) -> str:
    """``median (slowest-fastest)`` images/s of the run's timed section."""
    t = entry.get("throughput") or {}
    if not t:
        return f"{entry['throughput_img_s']:,.0f}"
    lo, hi = t["images_per_s_range"]
    return f"{t['images_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f})"
