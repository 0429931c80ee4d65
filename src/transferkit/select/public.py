"""Public ground truth for model recommendation, shipped with transferkit, and data-free priors.

Tables (package data under ``transferkit/select/tables/``, each file naming its source and citation):

- ``sfda-group1``: fine-tune accuracies of 11 ImageNet-supervised torchvision models on 11 datasets (the standard
  benchmark of You et al., LogME, ICML 2021), as published with the SFDA code (Shao et al., ECCV 2022,
  TencentARC/SFDA ``tw_group1.py``), with the per-dataset weighted tau the SFDA readme reports for LEEP, LogME,
  NLEEP, PARC and SFDA as reference rows;
- ``sfda-group2``: the same for 12 self-supervised ResNet-50s (``tw_group2.py``; no published reference rows).

Their rows have the schema of :class:`~transferkit.results.ResultsTable` (protocol ``finetune``, metric
``top1``), so ``transferkit rank evaluate --table`` reads them like our own table.

Data-free priors rank a held-out dataset's models without looking at its data:

- ``prior: mean rank``: each model's mean accuracy rank over the *other* datasets (leave-one-dataset-out;
  :func:`mean_rank_prior` never reads the held-out dataset's accuracies);
- ``prior: parameters``: the parameter count (torchvision architectures built without weights for the public
  tables; ``num_params`` of our own rows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import UserError
from transferkit.results import ResultRow
from transferkit.select.evaluate import mean_rank_prior  # noqa: F401  (re-exported)

PUBLIC_TABLES = ("sfda-group1", "sfda-group2")


def load_table(name_or_path: str) -> tuple[list[ResultRow], dict[str, Any]]:
    """Rows and metadata (``source``, ``citation``, ``reference_weighted_tau``...) of a shipped table (by name)
    or of a results-table file (by path)."""
    if name_or_path in PUBLIC_TABLES:
        text = resources.files("transferkit.select").joinpath("tables", f"{name_or_path}.json").read_text()
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"--table '{name_or_path}' is neither a shipped table ({', '.join(PUBLIC_TABLES)}) nor a file"
            )
        text = path.read_text()
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UserError(f"--table '{name_or_path}' is not JSON ({e})") from None
    raw = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise UserError(
            f"--table '{name_or_path}' has no 'rows' list; expected a results table ({{\"rows\": [...]}})"
        )
    rows = []
    for i, d in enumerate(raw):
        row = ResultRow.from_dict(d) if isinstance(d, dict) else None
        if row is None:
            raise UserError(
                f"--table '{name_or_path}': row {i} is not a result row (it needs dataset.key, backbone, a known "
                "protocol, metric and a finite value); fix or remove it"
            )
        rows.append(row)
    return rows, {k: v for k, v in doc.items() if k != "rows"}


#: torchvision builders of the public tables' supervised models (group 2: every model is a ResNet-50)
_TORCHVISION = {"resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169", "densenet201",
                "mnasnet1_0", "mobilenet_v2", "googlenet", "inception_v3"}  # fmt: skip


def parameter_counts(models: Sequence[str], rows: Sequence[ResultRow] = ()) -> dict[str, float]:
    """Parameters per model: ``num_params`` of the rows where they carry it, else the torchvision architecture
    built without weights (offline); models of neither kind are left out."""
    out: dict[str, float] = {}
    for r in rows:
        if isinstance(r.extra.get("num_params"), int | float):
            out[r.backbone] = float(r.extra["num_params"])
    missing = [m for m in models if m not in out]
    group2 = {"byol", "deepcluster-v2", "infomin", "insdis", "moco-v1", "moco-v2", "pcl-v1", "pcl-v2", "sela-v2",
              "simclr-v1", "simclr-v2", "swav"}  # fmt: skip
    if missing:
        import torchvision

        for m in missing:
            arch = "resnet50" if m in group2 else m
            if arch in _TORCHVISION:
                kw = (
                    {"aux_logits": False, "init_weights": False}
                    if arch in ("googlenet", "inception_v3")
                    else {}
                )
                net = torchvision.models.get_model(arch, weights=None, **kw)
                out[m] = float(sum(p.numel() for p in net.parameters()))
    return out


def table_examples(
    truth: Mapping[str, Mapping[str, float]], params: Mapping[str, float], models: Sequence[str]
) -> list[Any]:
    """Ranking lists of a table without weights or images: each model's code is its one-hot identity (the
    ranker's first layer turns it into a learned per-model embedding) plus its z-scored log parameter count;
    the dataset is one constant token."""
    from transferkit.select.pipeline import standardized_columns
    from transferkit.select.ranker import RankExample

    index = {m: i for i, m in enumerate(models)}
    log_params = {m: float(np.log(v)) for m, v in params.items()}
    out = []
    for d, accs in truth.items():
        names = sorted(accs)
        one_hot = np.zeros((len(names), len(models)), dtype=np.float32)
        one_hot[np.arange(len(names)), [index[m] for m in names]] = 1.0
        codes = np.concatenate([one_hot, standardized_columns([log_params], names)], axis=1)
        targets = np.array([accs[m] for m in names], dtype=np.float64)
        out.append(RankExample(d, np.zeros((1, 1), dtype=np.float32), codes, targets, names))
    return out


def evaluate_table(
    rows: Sequence[ResultRow],
    meta: Mapping[str, Any],
    target: str | None = None,
    ranker: Any = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Every predictor the table allows, against its accuracies, per dataset: weighted tau exactly as the SFDA
    scripts compute it (``scipy.stats.weightedtau(score, accuracy)``), Kendall tau, top-1 hit and regret
    (:func:`~transferkit.select.evaluate.rank_metrics`); the priors leave each dataset out. With ``ranker``
    (:class:`~transferkit.select.options.LearnedRankerOptions`), the ranking transformer too, leave-one-dataset-out,
    on :func:`table_examples` with its per-pair features (the prior, the table's scores).

    Returns ``{"target", "datasets", "per_dataset": {predictor: {dataset: metrics}}, "summary": {predictor:
    means}, "reference": {method: {dataset: weighted tau, "mean": ...}}}``.
    """
    from transferkit.results import choose_target, rows_of_target, scores_by_dataset, values_by_dataset
    from transferkit.select.evaluate import LodoResult, random_ranker_expectation, rank_metrics

    target = choose_target(rows, target)
    truth = values_by_dataset(rows_of_target(rows, target))
    names = {r.dataset_key: r.dataset_name for r in rows}
    datasets = sorted(truth, key=lambda k: names.get(k, k))
    if len(datasets) < 2:
        raise UserError(f"the table has {len(datasets)} dataset(s) with {target}; the priors need at least 2")
    models = sorted({m for accs in truth.values() for m in accs})
    params = parameter_counts(models, rows)
    result = LodoResult()
    per = result.per_dataset
    for d in datasets:
        per.setdefault("prior: mean rank", {})[d] = rank_metrics(mean_rank_prior(truth, d), truth[d])
        sizes = [params[m] for m in truth[d] if m in params]
        if len(sizes) >= 2 and max(sizes) > min(
            sizes
        ):  # a constant column ranks nothing (group 2: ResNet-50s)
            per.setdefault("prior: parameters", {})[d] = rank_metrics(params, truth[d])
        per.setdefault("random", {})[d] = random_ranker_expectation(truth[d])
    scores = scores_by_dataset(rows)
    for score, values in scores.items():
        for d in datasets:
            if d in values and len(set(values[d]) & set(truth[d])) >= 2:
                per.setdefault(score, {})[d] = rank_metrics(values[d], truth[d])
    if ranker is not None:
        from transferkit.select.pipeline import PairFeatures, evaluate_lodo
        from transferkit.select.trainers import trainers_from

        _, make_ranker = trainers_from(ranker)
        features = (
            PairFeatures(ranker.features, truth, scores, sorted(scores), ranker.offset)
            if ranker.features
            else None
        )
        lodo = evaluate_lodo(
            table_examples(truth, params, models), make_ranker, progress=progress, features=features
        )
        per["ranker"] = lodo.per_dataset["ranker"]
        result.details["ranker_features"] = features.names if features else []
        result.details["ranker_offsets"] = lodo.details.get("ranker_offsets", {})
    reference = {}
    for method, taus in ((meta.get("reference_weighted_tau") or {}).get("methods") or {}).items():
        by_key = {k: taus[names.get(k, k)] for k in datasets if names.get(k, k) in taus}
        reference[method] = {
            **by_key,
            "mean": float(np.mean(list(by_key.values()))) if by_key else float("nan"),
        }
    return {
        "target": target,
        "datasets": datasets,
        "dataset_names": {k: names.get(k, k) for k in datasets},
        "models": models,
        "parameters": params,
        **result.to_dict(),
        "reference": reference,
        "source": meta.get("source"),
        "citation": meta.get("citation"),
    }


def table_report_tables(result: Mapping[str, Any], title: str) -> list[Any]:
    """The summary (mean per predictor, published reference rows beside) and the weighted tau per dataset."""
    from transferkit.report import Table

    summary, reference = result["summary"], result["reference"]
    order = sorted(summary, key=lambda m: -np.nan_to_num(summary[m]["weighted_tau"], nan=-9))
    rows = [[m, summary[m]["datasets"], *(summary[m][k] for k in ("weighted_tau", "kendall_tau", "top1_hit", "top1_regret"))]
            for m in order]  # fmt: skip
    rows += [[f"{m} (published)", len(v) - 1, v["mean"], None, None, None] for m, v in reference.items()]
    main = Table(
        ["predictor", "datasets", "weighted tau", "Kendall tau", "top-1 hit", "top-1 regret"],
        rows,
        title=title,
        formats={
            "datasets": ".0f",
            "weighted tau": ".3f",
            "Kendall tau": ".3f",
            "top-1 hit": ".3f",
            "top-1 regret": ".4f",
        },  # fmt: skip
        note="priors leave the dataset out; 'published': the source's reported weighted tau (scipy weightedtau), "
        "measured on the data; regret in accuracy (fraction).",
    )
    names = result["dataset_names"]
    methods = [*order, *[f"{m} (published)" for m in reference]]
    per_rows = []
    for d in result["datasets"]:
        row = [names[d]]
        for m in methods:
            if m.endswith(" (published)"):
                row.append(reference[m.removesuffix(" (published)")].get(d))
            else:
                row.append(result["per_dataset"].get(m, {}).get(d, {}).get("weighted_tau"))
        per_rows.append(row)
    per = Table(["dataset", *methods], per_rows, title="Weighted tau per dataset",
                formats={m: ".3f" for m in methods})  # fmt: skip
    return [main, per]


def plot_table_evaluation(result: Mapping[str, Any], path: Path) -> Path:
    """Mean weighted tau per predictor (ours) and per published method, as bars."""
    from transferkit.report.plots import new_figure, save_figure

    summary, reference = result["summary"], result["reference"]
    names = [m for m in summary if m != "random"] + [f"{m} (published)" for m in reference]
    values = [summary[m]["weighted_tau"] for m in summary if m != "random"] + [
        v["mean"] for v in reference.values()
    ]
    fig = new_figure(max(6.0, 0.6 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    colors = ["#4c72b0" if not n.endswith("(published)") else "#999999" for n in names]
    ax.bar(range(len(names)), [0 if v != v else v for v in values], color=colors)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean weighted tau")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(f"{result.get('name', '')}: ranking the models without fine-tuning them")
    return save_figure(fig, path)
