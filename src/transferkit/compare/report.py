"""The compare report: tables, plots, the summary's claims and doubts, and the Markdown/HTML report of a
:class:`~transferkit.compare.results.CompareResults`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferkit.compare.doubts import STRONGEST_LINEAR_RULE
from transferkit.compare.results import (
    LINEAR_PROTOCOLS,
    PROTOCOL_LABELS,
    BackboneResult,
    CompareResults,
)
from transferkit.compare.stats import leaders
from transferkit.report import Report, Table, heatmap, params_m, percent, scatter


def _points(v: float | None) -> str:
    return f"{100 * v:+.2f}" if v is not None else "-"


def results_table(results: CompareResults) -> Table:
    """The main table: one row per backbone (accuracies as % top-1 on test)."""
    entries = results.backbones
    ran = results.protocols_run()
    columns = [
        "backbone",
        "modality",
        "pretrained",
        "params",
        "embed dim",
        "images/s",
        "linear top-1",
        "linear 95% CI",
        *(["logreg top-1"] if "logreg" in ran else []),
        "kNN top-1",
        *(["fine-tune top-1"] if "finetune" in ran else []),
        "best linear head",
        "best k",
    ]
    rows = []
    for e in entries:
        head = e.linear.best_head
        rows.append(
            {
                "backbone": e.name,
                "modality": e.modality,
                "pretrained": "yes" if e.pretrained else "no",
                "params": e.num_params,
                "embed dim": e.embed_dim,
                "images/s": _speed(e),
                "linear top-1": e.linear.test_acc1,
                "linear 95% CI": e.linear.test_ci95,
                "logreg top-1": e.logreg.test_acc1 if e.logreg else None,
                "kNN top-1": e.knn.test_acc1,
                "fine-tune top-1": e.finetune.test_acc1 if e.finetune else None,
                "best linear head": f"{head['variant']}, lr {head['lr']:g}"
                + (f", wd {head['weight_decay']:g}" if head.get("weight_decay") else ""),
                "best k": e.knn.best_k,
            }
        )
    ds = results.dataset
    strongest = results.strongest_linear
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
        note=(
            f"linear = the linear-probe grid, logreg = the logistic regression; the summary's linear-probe claims "
            f"use the {strongest.label}, by the rule under Protocol."
            if "logreg" in ran
            else None
        ),
    )


def gains_table(results: CompareResults) -> Table:
    """Pretrained backbone vs its random twin, one row per protocol both ran."""
    strongest = results.strongest_linear.protocol
    mark = "logreg" in results.protocols_run()
    rows = [
        {
            "backbone": g.backbone,
            "random twin": g.random_twin,
            "protocol": PROTOCOL_LABELS[p] + (" (claims)" if mark and p == strongest else ""),
            "pretrained": d.pretrained,
            "random": d.random,
            "gain": d.gain,
            "p": d.p,
        }
        for g in results.pretraining_gains
        for p, d in g.protocols.items()
    ]
    return Table(
        ["backbone", "random twin", "protocol", "pretrained", "random", "gain", "p"],
        rows,
        title="Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)",
        formats={"pretrained": percent, "random": percent, "gain": _points, "p": ".3g"},
        note="(claims): the linear protocol the summary's claims use (the Protocol section gives the rule).",
    )


def pairs_table(results: CompareResults) -> Table:
    """Fair pairs: each backbone against the closest-size backbone of another modality."""
    ran = results.protocols_run()
    rows = []
    for r in results.fair_pairs:
        row = {
            "backbone": f"{r.backbone} ({r.modality})",
            "params": r.params,
            "closest other-modality backbone": f"{r.partner} ({r.partner_modality})"
            + ("" if r.fair else ": no fair partner, too far in size"),
            "its params": r.partner_params,
            "size ratio": r.size_ratio,
        }
        rows.append({**row, **{f"{p} delta": r.deltas.get(p) for p in ran}})
    return Table(
        [
            "backbone",
            "params",
            "closest other-modality backbone",
            "its params",
            "size ratio",
            *[f"{p} delta" for p in ran],
        ],
        rows,
        title=(
            "Fair pairs: closest-size backbone of another modality within "
            f"{results.protocol.get('fair_max_ratio', 4.0):g}x (delta = backbone minus partner, points)"
        ),
        formats={
            "params": params_m,
            "its params": params_m,
            "size ratio": lambda v: f"{v:.2f}x",
            **{f"{p} delta": _points for p in ran},
        },
    )


def pairwise_table(results: CompareResults) -> Table:
    """Every pair of backbones: test top-1 differences and McNemar p under every protocol that ran."""
    by_pair: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results.pairwise:
        row = by_pair.setdefault((r.a, r.b), {"a": r.a, "b": r.b})
        row[f"{r.protocol} delta"] = r.delta
        row[f"{r.protocol} p"] = r.p
    ran = [p for p in PROTOCOL_LABELS if any(r.protocol == p for r in results.pairwise)]
    cols = ["a", "b", *[f"{p} {x}" for p in ran for x in ("delta", "p")]]
    return Table(
        cols,
        list(by_pair.values()),
        title="Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)",
        formats={**{f"{p} delta": _points for p in ran}, **{f"{p} p": ".3g" for p in ran}},
        note=_protocol_key(ran),
    )


def _protocol_key(ran: list[str]) -> str:
    return "; ".join(f"{p} = {PROTOCOL_LABELS[p]}" for p in ran) + "."


def seeds_table(results: CompareResults) -> Table:
    """Mean and spread of test top-1 over the run's seeds, per protocol."""
    rows = []
    protocols = [p for p in PROTOCOL_LABELS if any(e.seeds and p in e.seeds for e in results.backbones)]
    for e in results.backbones:
        sd = e.seeds
        if not sd:
            continue
        row: dict[str, Any] = {"backbone": e.name, "seeds": len(sd["seeds"])}
        for p in protocols:
            s = sd.get(p)
            row.update({f"{p} mean": s and s["mean"], f"{p} sd": s and s["std"],
                        f"{p} range": s and (s["min"], s["max"])})  # fmt: skip
        rows.append(row)
    span = lambda v: f"{100 * v[0]:.2f}-{100 * v[1]:.2f}"  # noqa: E731
    points = lambda v: f"{100 * v:.2f}"  # noqa: E731
    return Table(
        ["backbone", "seeds", *[f"{p} {x}" for p in protocols for x in ("mean", "sd", "range")]],
        rows,
        title="Over seeds: test top-1 % (mean, sample sd, range); random inits, heads and batch order vary",
        formats={
            **{f"{p} mean": percent for p in protocols},
            **{f"{p} sd": points for p in protocols},
            **{f"{p} range": span for p in protocols},
        },
        note=_protocol_key(protocols),
    )


def knn_table(results: CompareResults) -> Table:
    ks = sorted({int(k) for e in results.backbones for k in e.knn.acc1["val"]})
    rows = []
    for e in results.backbones:
        for split in ("val", "test"):
            accs = e.knn.acc1[split]
            rows.append([e.name, split, *[accs.get(str(k)) for k in ks]])
    cols = ["backbone", "split", *[f"k={k}" for k in ks]]
    return Table(
        cols,
        rows,
        title=f"kNN top-1 % by k (T = {results.protocol['knn']['temperature']})",
        formats={c: percent for c in cols[2:]},
    )


def grid_table(results: CompareResults) -> Table:
    """Per backbone and feature variant: the best LR and its val top-1; the grid's learning rates (with its
    automatic extensions) and, for the chosen head, whether its LR is on the grid's edge."""
    rows = []
    for e in results.backbones:
        grid = e.linear
        lrs = grid.learning_rates or sorted({h["lr"] for h in grid.grid})
        span = f"{min(lrs):g}..{max(lrs):g}" + (f" (extended {grid.extensions}x)" if grid.extensions else "")
        best_by_variant: dict[str, dict] = {}
        for h in grid.grid:
            cur = best_by_variant.get(h["variant"])
            if cur is None or h["val_acc1"] > cur["val_acc1"]:
                best_by_variant[h["variant"]] = h
        for v, h in best_by_variant.items():
            chosen = h["name"] == grid.best_head["name"]
            edge = (grid.lr_edge or "") if chosen else ""
            rows.append([e.name, v, h["lr"], h["val_acc1"], "yes" if chosen else "", span, edge])
    return Table(
        ["backbone", "variant (pooling/blocks)", "best lr", "val top-1", "chosen", "lr grid", "lr on edge"],
        rows,
        title="Linear-probe grid: best learning rate per feature variant (val top-1 %)",
        formats={"best lr": "g", "val top-1": percent},
    )


def finetune_table(results: CompareResults) -> Table:
    """Per fine-tuned backbone and epoch: mean train loss and val top-1, and whether it had converged."""
    rows = []
    for e in results.backbones:
        ft = e.finetune
        if ft is None:
            continue
        verdict = {True: "yes", False: "no", None: "unknown"}[ft.converged]
        for i, h in enumerate(ft.history or [None]):
            last = i == max(len(ft.history) - 1, 0)
            rows.append(
                {
                    "backbone": e.name,
                    "epoch": h.epoch if h else None,
                    "train loss": h.train_loss if h else None,
                    "val top-1": h.val_acc1 if h else None,
                    "converged": f"{verdict}: {ft.convergence}" if last else "",
                }
            )
    return Table(
        ["backbone", "epoch", "train loss", "val top-1", "converged"],
        rows,
        title="Fine-tune per epoch (mean train loss, val top-1 %) and convergence",
        formats={"train loss": ".4f", "val top-1": percent},
    )


def _panels(results: CompareResults) -> dict[str, str]:
    """Protocol key -> panel title of the plots: the strongest linear protocol, kNN and the fine-tune, each when
    every backbone ran it (the grid stands in for the linear probe otherwise)."""
    everyone = [p for p in PROTOCOL_LABELS if all(p in e.protocols for e in results.backbones)]
    linear = results.strongest_linear.protocol if results.strongest_linear.protocol in everyone else "linear"
    panels = {linear: f"linear probe ({PROTOCOL_LABELS[linear]})", "knn": "kNN"}
    if "finetune" in everyone:
        panels["finetune"] = "fine-tune"
    return panels


def make_plots(results: CompareResults, plot_dir: Path) -> dict[str, Path]:
    entries = results.backbones
    names = [e.name for e in entries]
    groups = [e.modality for e in entries]
    shown = _panels(results)
    panels = {}
    for protocol, label in shown.items():
        rs = [e.protocols[protocol] for e in entries]
        acc = [100 * r.test_acc1 for r in rs]
        ci = [
            (100 * r.test_ci95[0], 100 * r.test_ci95[1]) if r.test_ci95 else (a, a) for r, a in zip(rs, acc)
        ]
        panels[label] = (acc, ci)
    linear = next(iter(shown))
    plots = {
        "acc_vs_params": scatter(
            [e.num_params / 1e6 for e in entries],
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
            [e.throughput_img_s or float("nan") for e in entries],
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
            np.array(
                [e.protocols[linear].per_class_acc or e.linear.per_class_acc for e in entries],
                dtype=float,
            ),
            names,
            results.dataset["class_names"],
            plot_dir / "per_class_accuracy.png",
            title=f"Per-class test accuracy of the linear probe ({PROTOCOL_LABELS[linear]})",
            xlabel="class",
            cbar_label="accuracy",
        ),
    }
    return plots


# ---------------------------------------------------------------------------------------------- the summary
#: doubt kinds that concern each protocol's claims
_CLAIM_DOUBTS = {
    "linear": ("lr_edge", "protocol_disagreement"),
    "logreg": ("protocol_disagreement",),
    "knn": (),
    "finetune": ("finetune_unconverged", "finetune_below_probe"),
}


def _claim_label(results: CompareResults, protocol: str, why: bool = True) -> str:
    """A protocol as a claim names it; a linear protocol with (``why``) the figures it was chosen by."""
    if protocol not in LINEAR_PROTOCOLS:
        return PROTOCOL_LABELS[protocol]
    s = results.strongest_linear
    if len(s.mean_val_acc1) < 2 or not why:
        return f"linear probe ({s.label})"
    other = next(p for p in LINEAR_PROTOCOLS if p != s.protocol)
    return (
        f"linear probe ({s.label}, the linear protocol stronger on val: mean val top-1 "
        f"{percent(s.mean_val_acc1[s.protocol])}% vs {percent(s.mean_val_acc1[other])}% for the "
        f"{PROTOCOL_LABELS[other]})"
    )


def _capital(text: str) -> str:
    """The first letter upper-case, unless the word starts with a lower-case letter on purpose (kNN)."""
    return text if text.startswith("kNN") else text[0].upper() + text[1:]


def _see_doubts(results: CompareResults, protocol: str, names: set[str]) -> str:
    kinds = _CLAIM_DOUBTS[protocol]
    hit = [d for d in results.doubts if d.kind in kinds and (d.backbone is None or d.backbone in names)]
    return f" See Doubts ({', '.join(dict.fromkeys(d.kind for d in hit))})." if hit else ""


def headline(results: CompareResults) -> list[str]:
    """The summary's claims, one Markdown bullet each: every pretrained backbone against its random twin, then the
    best backbone (or those not significantly apart) per protocol. Linear-probe claims use the run's strongest
    linear protocol (named in the line); kNN and the fine-tune follow when they ran."""
    lines = []
    claims = [results.strongest_linear.protocol, "knn", "finetune"]

    def verdict(gain: float, p: float | None) -> str:
        if p is None:
            return f"{100 * gain:+.2f} points"
        if p >= 0.05:
            return f"{100 * gain:+.2f} points, not significant (McNemar p = {p:.2g})"
        return f"{100 * gain:+.2f} points, pretraining {'helps' if gain > 0 else 'hurts'} (p = {p:.2g})"

    for g in results.pretraining_gains:
        parts = [
            f"{_claim_label(results, p, why=False)} "
            f"{percent(d.pretrained)}% vs {percent(d.random)}% ({verdict(d.gain, d.p)})"
            for p in claims
            if (d := g.protocols.get(p)) is not None
        ]
        see = "".join(dict.fromkeys(_see_doubts(results, p, {g.backbone, g.random_twin}) for p in claims
                                    if p in g.protocols))  # fmt: skip
        lines.append(f"- **{g.backbone}** vs its random-init twin: {'; '.join(parts)}.{see}")
    for protocol in claims:
        ran = [e for e in results.backbones if protocol in e.protocols]
        if len(ran) < 2:
            continue
        label = _claim_label(results, protocol)
        lead = leaders(ran, results.pairwise, protocol)
        best = results.backbone(lead.best)
        acc = f"{percent(best.protocols[protocol].test_acc1)}%"
        see = _see_doubts(results, protocol, {lead.best, *(n for n, _ in lead.ties)})
        if lead.ties:
            others = ", ".join(
                f"{n} ({percent(results.backbone(n).protocols[protocol].test_acc1)}%, p = {p:.2g})"
                for n, p in lead.ties
            )
            lines.append(
                f"- {_capital(label)}: no significant difference between **{best.name}** ({acc}) "
                f"and {others} (exact McNemar, alpha 0.05).{see}"
            )
        elif lead.untested:
            lines.append(
                f"- Highest {label}: **{best.name}** ({acc} test top-1); not tested for significance against "
                f"{', '.join(lead.untested)} (no per-image results).{see}"
            )
        else:
            lines.append(
                f"- Best {label}: **{best.name}** ({acc} test top-1, {params_m(best.num_params)} parameters), "
                f"ahead of every other backbone (McNemar p <= {lead.worst_p:.2g}).{see}"
            )
    return lines


def doubts_text(results: CompareResults) -> str:
    """The summary's Doubts paragraph: every doubt of the run, or that the rules found none."""
    if not results.doubts:
        return "**Doubts**: none by the rules under Protocol."
    items = "\n".join(f"- *{d.kind}*: {d.message}." for d in results.doubts)
    return f"**Doubts** ({len(results.doubts)}; the rules are under Protocol):\n\n{items}"


def build_report(results: CompareResults, plots: dict[str, Path]) -> Report:
    """The compare report: summary (claims, doubts, tables), plots, details, protocol (one keyed section each)."""
    ds = results.dataset
    proto = results.protocol
    counts = ds["counts"]
    report = Report(
        f"Backbone comparison on {ds['name']}",
        meta=(
            f"{ds['num_classes']} classes, {counts['train']}/{counts['val']}/{counts['test']} train/val/test "
            f"images at {ds['image_size']}px; device {proto['device']}; seed {proto['seed']}; "
            f"dataset key {ds['key'][:12]}; {results.finished}"
        ),
    )
    summary = report.section("summary", "Summary").add_text("\n".join(headline(results)))
    summary.add_text(doubts_text(results))
    if ds.get("test_is_val"):
        summary.add_text(
            "**Note:** this dataset has no separate test split; test numbers are on the val split."
        )
    summary.add_table(results_table(results), key="results")
    summary.add_text(params_note(results))
    if results.pretraining_gains:
        summary.add_table(gains_table(results), key="gains")
    if results.pairwise:
        summary.add_table(pairwise_table(results), key="pairwise")
    if any(e.seeds for e in results.backbones):
        summary.add_table(seeds_table(results), key="seeds")
    if results.fair_pairs:
        summary.add_table(pairs_table(results), key="fair_pairs")
    shown = " and ".join(_panels(results).values())
    report.section("plots", "Plots").add_image(
        plots["acc_vs_params"], f"Test accuracy vs parameter count: {shown}"
    ).add_image(plots["acc_vs_throughput"], f"Test accuracy vs forward throughput: {shown}").add_image(
        plots["per_class"],
        f"Per-class test accuracy of each backbone's {next(iter(_panels(results).values()))}",
    )
    details = report.section("details", "Details")
    details.add_table(grid_table(results), key="grid").add_table(knn_table(results), key="knn")
    if "finetune" in results.protocols_run():
        details.add_table(finetune_table(results), key="finetune")
    report.section("protocol", "Protocol").add_text(_protocol_text(results))
    return report


def _protocol_text(results: CompareResults) -> str:
    proto = results.protocol
    probe, knn = proto["probe"], proto["knn"]
    n_decays = len(probe.get("weight_decays", [0.0]))  # results of versions before the decay axis lack it
    rules = proto.get("rules") or {}
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
        "**Tests**: exact McNemar tests on the same test images, per pair of backbones and protocol (uncorrected "
        "for the number of pairs); a backbone is called best only when every other is significantly behind it.",
        f"**Claims**: the summary's linear-probe claims (the best backbone, the pretrained-vs-twin lines, their "
        f"McNemar tests) use one linear protocol, this run the {results.strongest_linear.label}: "
        f"{rules.get('strongest_linear', STRONGEST_LINEAR_RULE)}. The tables show every protocol that ran.",
    ]
    ft = proto.get("finetune")
    if ft:
        clip = ft.get("gradient_clip_val")
        differs = ft.get("differences_from_preset") or []
        method.append(
            f"**Fine-tune**: `transferkit fit` of the classification task with the recipe of "
            f"`{ft.get('preset', 'configs/classification/finetune.yaml')}`: {ft['epochs']} epochs, AdamW blr "
            f"{ft['blr']:g}, weight decay {ft['weight_decay']:g}, layer decay {ft['layer_decay']}, warmup "
            f"{ft['warmup_epochs']:g} epochs, label smoothing {ft['label_smoothing']}, "
            + (f"gradient clipping at norm {clip:g}" if clip else "no gradient clipping")
            + f", {ft.get('precision', '32-true')} precision, batch {ft['batch_size']}, images at "
            f"{ft.get('image_size') or results.dataset['image_size']}px; the best checkpoint on val top-1 is "
            "reported on test (runs under `finetune/`). "
            + (f"It differs from the preset in: {'; '.join(differs)}. " if differs else "")
        )
    text = "\n".join(f"- {m}" for m in method)
    doubt_rules = [f"- *{k}*: {v}." for k, v in rules.items() if k != "strongest_linear"]
    if doubt_rules:
        text += "\n\n**Doubts** are raised by these rules:\n\n" + "\n".join(doubt_rules)
    return text


def params_note(results: CompareResults) -> str:
    """What the params column counts, and what it leaves out per backbone."""
    left = [
        f"{e.name}: {', '.join(f'{what} {params_m(n)}' for what, n in e.left_out_params.items())}"
        for e in results.backbones
        if e.left_out_params
    ]
    return "params: the parameters an image forward uses (what the fair-pair ratio compares)" + (
        "; left out: " + "; ".join(left) + "." if left else "; none left out."
    )


def _speed(entry: BackboneResult) -> str:
    """``median (slowest-fastest)`` images/s of the run's timed section."""
    t = entry.throughput or {}
    if not t:
        return "-"
    lo, hi = t["images_per_s_range"]
    return f"{t['images_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f})"
