"""Training-free ranking of backbones for a dataset (``transferkit rank``), as library functions.

:func:`rank_backbones` extracts (or reads from the feature cache) each backbone's features of one split,
computes every training-free score (:mod:`transferkit.select.scores`), the ensemble rank and, when the results
table holds measured accuracies of the same dataset, each score's agreement with them
(:func:`transferkit.select.evaluate.rank_metrics`). Its result is typed (:mod:`transferkit.select.rank_results`:
:class:`RankResults`, a dict only at the JSON edge). :func:`score_rows` turns the scores into results-table rows (protocol ``score``); :func:`rank_tables`
and :func:`rank_report` present them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.backbones import backbone_options, resolve_backbone
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions, get_features
from transferkit.report import Report, Table
from transferkit.results import ResultRow, choose_target, dataset_entry, rows_of_target, values_by_dataset
from transferkit.select.cost import DEFAULT_ROUNDS, Budget, measure_costs, recommend
from transferkit.select.evaluate import rank_metrics
from transferkit.select.rank_results import (
    MIN_INFORMATIVE,
    Agreement,
    CandidateCost,
    CandidateResult,
    CostSetup,
    MeasuredAccuracy,
    RankProtocol,
    RankResults,
    Recommendation,
)
from transferkit.select.scores import (
    Features,
    compute_scores,
    ensemble_ranks,
    resolve_score_names,
    stratified_subset,
)
from transferkit.select.source_preds import source_predictions

log = logging.getLogger(__name__)


def matching_rows(rows: Sequence[ResultRow], dataset: dict[str, Any]) -> tuple[list[ResultRow], bool]:
    """Measured-accuracy rows of this dataset: the same key (``exact`` = True), else rows of the same dataset
    name measured at another image size (whole datasets only, not class-subset tasks)."""
    measured = [r for r in rows if r.protocol != "score"]
    exact = [r for r in measured if r.dataset_key == dataset["key"]]
    if exact:
        return exact, True
    same = [
        r
        for r in measured
        if r.dataset_name == dataset["name"] and not (r.dataset.get("spec") or {}).get("classes")
    ]
    return same, False


def rank_backbones(
    spec: DataSpec,
    backbones: Sequence[str],
    *,
    split: str = "train",
    scores: str | Sequence[str] = "all",
    max_samples: int | None = None,
    extract: ExtractOptions | None = None,
    seed: int = 0,
    patch_size: int | None = None,
    ranker: str | Path | None = None,
    results: Sequence[ResultRow] = (),
    target: str | None = None,
    cost: bool = True,
    budget: Budget | None = None,
    cost_rounds: int = DEFAULT_ROUNDS,
) -> RankResults:
    """Score ``backbones`` on ``split`` of the dataset ``spec`` describes, without fine-tuning any.

    Args:
        spec: the dataset (``spec.classes`` restricts it to a class subset).
        backbones: backbone names.
        split: the split whose features are scored.
        scores: score names or ``all``.
        max_samples: score a class-stratified subset of this many images.
        extract: extraction / cache settings.
        seed: seed of random-init backbones, the subset and the GMM pseudo-sources.
        patch_size: patch size of language-model backbones.
        ranker: a trained learned-ranker folder whose score is added as ``learned``.
        results: results-table rows; measured accuracies of this dataset become the ``accuracy`` to compare with.
        target: ``protocol/metric`` of those rows to compare with (default: the most common).
        cost: measure each backbone's cost on this hardware (:func:`~transferkit.select.cost.measure_costs`:
            the timings in interleaved rounds across the backbones, which all stay in memory until then).
        budget: limits the recommendation must meet (needs ``cost``).
        cost_rounds: timed rounds of the interleaved timing.

    Returns the :class:`RankResults`: one :class:`CandidateResult` per backbone (in the order given), the
    measured accuracies and every score's agreement with them and, with ``cost``, the cost setup and the
    :class:`Recommendation` (:func:`~transferkit.select.cost.recommend` on the learned ranker's score, else the
    ensemble's mean rank).
    """
    from transferkit.select.pipeline import EmbeddingStore, LearnedRanker

    started = time.perf_counter()
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split '{split}'; choose train, val or test")
    if max_samples is not None and max_samples < 2:
        raise UserError(f"max_samples must be >= 2, got {max_samples}")
    budget = budget or Budget()
    if budget.active and not cost:
        raise UserError("a budget (--max_latency_ms, --max_memory_mb, --min_images_per_s) needs --cost true")
    if cost and cost_rounds < 1:
        raise UserError(f"--cost_rounds must be >= 1, got {cost_rounds}")
    extract = extract or ExtractOptions()
    score_names = resolve_score_names(scores)
    dm = spec.build()
    dataset = spec.describe()
    keep_classes = spec.class_indices(dm)
    learned = LearnedRanker.load(ranker) if ranker else None
    store = tokens = None
    if learned is not None:
        store = EmbeddingStore(
            learned.settings, root=Path(ranker) / "embeddings", cache_dir=extract.cache_dir
        )
        tokens = store.dataset_tokens(spec, split)
    options = backbone_options(list(backbones), patch_size)
    values: dict[str, dict[str, float]] = {s: {} for s in score_names}
    seconds: dict[str, dict[str, float]] = {s: {} for s in score_names}
    facts: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    costs: dict[str, dict[str, Any]] = {}
    timed: dict[str, Any] = {}  # kept for the interleaved timing after the loop
    for name in backbones:
        t0 = time.perf_counter()
        bb = resolve_backbone(name, dm.image_size, seed=seed, **options[name])
        build_s = time.perf_counter() - t0
        head = bb.source_head() if {"leep", "nce"} & set(score_names) else None
        extra = [head.pooling] if head is not None and head.pooling != bb.pooling else []
        fs = get_features(bb, dm, split, extra_poolings=extra, **extract.kwargs())
        rows = np.isin(fs.labels, keep_classes)  # the class subset (every row without one)
        x, y = np.asarray(fs.features)[rows], np.asarray(fs.labels)[rows]
        head_x = np.asarray(fs.view(pooling=head.pooling).features)[rows] if head is not None else None
        if max_samples is not None and len(y) > max_samples:
            keep = np.sort(stratified_subset(np.unique(y, return_inverse=True)[1], max_samples, seed=seed))
            x, y = x[keep], y[keep]
            head_x = None if head_x is None else head_x[keep]
        feats = Features(x)
        res = compute_scores(
            feats,
            y,
            score_names,
            source_probs_fn=lambda feats=feats, y=y, head=head, head_x=head_x: source_predictions(
                feats, y, head=head, head_features=head_x, seed=seed
            ),
        )
        for s, r in res.items():
            values[s][name] = r.value
            seconds[s][name] = r.seconds + r.extra.get("source_seconds", 0.0)  # LEEP: + source predictions
        source = next((r.extra["source"] for r in res.values() if "source" in r.extra), None)
        facts[name] = {
            "num_samples": int(len(y)),
            "dim": int(x.shape[1]),
            "num_params": int(bb.num_params()),
            "cache_hit": bool(fs.metadata.get("cache_hit")),
            "extract_seconds": float(fs.metadata.get("extract_seconds", 0.0)),
            "build_seconds": build_s,
            "source_predictions": None if source is None else str(source),
        }
        if cost:
            timed[name] = bb
        if learned is not None:
            assert store is not None
            vectors[name] = store.model_vector(name, dm.image_size, backbone=bb)
        del bb
    if cost:
        costs = measure_costs(
            timed,
            dm,
            split=split,
            batch_size=extract.batch_size or 32,
            device=extract.device,
            precision=extract.precision,
            rounds=cost_rounds,
            seed=seed,
        )
        timed.clear()
    if learned is not None:
        # one list: the ranker scores the candidates jointly, with this run's scores as its per-pair features
        assert tokens is not None
        t1 = time.perf_counter()
        joint = learned.score(tokens, np.stack([vectors[n] for n in backbones]), list(backbones), values)
        values["learned"] = {n: float(v) for n, v in zip(backbones, joint)}
        seconds["learned"] = {n: (time.perf_counter() - t1) / len(backbones) for n in backbones}
        missing = [f for f in learned.feature_names if f.startswith("score:") and f[6:] not in values]
        if missing:
            log.warning(
                "the learned ranker was trained with %s, which this run did not compute (add them to --scores); "
                "they count as the list's mean",
                ", ".join(missing),
            )
    ensemble = ensemble_ranks({s: v for s, v in values.items() if s != "learned"})
    accuracy = _measured_accuracy(results, dataset, target, backbones, values, ensemble)
    rec: dict[str, Any] = {"over_budget": {}, "budget_ties": {}, "pareto": []}
    recommendation = None
    if cost:
        by = "learned" if "learned" in values else "ensemble"
        predicted = values["learned"] if by == "learned" else {m: -r for m, r in ensemble.items()}
        rec = recommend(predicted, costs, budget)
        recommendation = Recommendation(
            by=by, recommended=rec["recommended"], budget=budget, latency_interval=rec["latency_interval"]
        )
    candidates = [
        CandidateResult(
            name=n,
            **facts[n],
            scores={s: v[n] for s, v in values.items() if n in v},
            score_seconds={s: v[n] for s, v in seconds.items() if n in v},
            ensemble_rank=ensemble.get(n),
            cost=CandidateCost.from_dict(costs[n]) if n in costs else None,
            over_budget=list(rec["over_budget"].get(n, [])),
            budget_ties=list(rec["budget_ties"].get(n, [])),
            pareto=n in rec["pareto"],
        )
        for n in backbones
    ]
    return RankResults(
        dataset=dataset,
        protocol=RankProtocol(
            split=split,
            max_samples=max_samples,
            seed=seed,
            patch_size=patch_size,
            learned_ranker=None if ranker is None else str(ranker),
            cost_rounds=cost_rounds if cost else None,
        ),
        methods=list(values),
        candidates=candidates,
        accuracy=accuracy,
        cost_setup=CostSetup.from_dict(next(iter(costs.values()))) if costs else None,
        recommendation=recommendation,
        wall_time_s=round(time.perf_counter() - started, 2),
    )


def _measured_accuracy(
    results: Sequence[ResultRow],
    dataset: dict[str, Any],
    target: str | None,
    backbones: Sequence[str],
    values: Mapping[str, Mapping[str, float]],
    ensemble: Mapping[str, float],
) -> MeasuredAccuracy | None:
    """The results table's accuracies of this dataset and every score's (and the ensemble's) agreement with
    them (:func:`rank_metrics`, when at least 2 candidates were measured); None when none was measured."""
    measured, exact = matching_rows(results, dataset)
    if not measured:
        return None
    chosen = choose_target(measured, target)
    by_ds = values_by_dataset(rows_of_target(measured, chosen))
    truth = next(iter(by_ds.values()))  # exact: one dataset; by name: the first one measured
    agreement: dict[str, Agreement] = {}
    if len([n for n in backbones if n in truth]) >= 2:
        for s, v in values.items():
            agreement[s] = Agreement.from_dict(rank_metrics(v, truth))
        agreement["ensemble"] = Agreement.from_dict(rank_metrics({m: -r for m, r in ensemble.items()}, truth))
    return MeasuredAccuracy(target=chosen, exact_match=exact, values=truth, agreement=agreement)


def score_rows(result: RankResults, run: str | None = None) -> list[ResultRow]:
    """Results-table rows (protocol ``score``, metric = the score) of a :func:`rank_backbones` result."""
    dataset = dataset_entry(result.dataset)
    rows = []
    for score in result.methods:
        if score == "learned":
            continue  # a model's output, not a property of the features
        for c in result.candidates:
            value = c.scores.get(score)
            if value is not None and np.isfinite(value):
                extra = {"num_params": c.num_params}
                rows.append(
                    ResultRow(dataset, c.name, "score", score, float(value), result.split, run, extra=extra)
                )
    return rows


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "nan"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3e}"


def _agreement(a: Agreement) -> str:
    if not a.informative:
        return f"n = {a.n} measured backbones: not informative"
    return (
        f"Kendall tau {_fmt(a.kendall_tau)}, weighted tau {_fmt(a.weighted_tau)}, top-1 hit {a.top1_hit:.0f} "
        f"(n = {a.n})"
    )


def rank_tables(result: RankResults) -> list[Table]:
    """One ranked table per score (value, seconds, real accuracy), the ensemble table, the cost table (with
    costs) and the agreement table."""
    acc = result.accuracy
    real = [f"real {acc.target}"] if acc else []
    agreement = acc.agreement if acc else {}

    def truth(c: CandidateResult) -> list[float | None]:
        return [result.accuracy_of(c.name)] if acc else []

    tables = []
    for s in result.methods:
        ranked = [result.candidate(n) for n in result.ranking(s)]
        rows = [[i, c.name, c.scores[s], c.score_seconds.get(s), *truth(c)] for i, c in enumerate(ranked, 1)]
        seconds_col = "seconds (includes the source predictions)" if s == "leep" else "seconds"
        tables.append(
            Table(
                ["#", "backbone", s, seconds_col, *real],
                rows,
                title=s,
                formats={s: _fmt, seconds_col: ".3f"},
                note=_agreement(agreement[s]) if s in agreement else None,
            )
        )
    rows = []
    ensembled = sorted((c for c in result.candidates if c.ensemble_rank is not None), key=lambda c: c.name)
    for i, c in enumerate(sorted(ensembled, key=lambda c: c.ensemble_rank), 1):
        extract = "cached" if c.cache_hit else f"{c.extract_seconds:.1f}"
        rows.append([i, c.name, c.ensemble_rank, f"{c.num_samples}x{c.dim}", extract, *truth(c)])
    tables.append(
        Table(
            ["#", "backbone", "mean rank", "features", "extract s", *real],
            rows,
            title="ensemble: mean rank over the training-free scores (1 = best)",
            formats={"mean rank": ".2f"},
        )
    )
    if result.recommendation is not None and result.cost_setup is not None:
        tables.append(cost_table(result))
    if acc is not None and agreement:
        n = next(iter(agreement.values())).n
        rows = [[s, a.kendall_tau, a.weighted_tau, a.top1_hit, a.top1_regret] for s, a in agreement.items()]
        tables.append(
            Table(
                ["score", "Kendall tau", "weighted tau", "top-1 hit", "top-1 regret"],
                rows,
                title=f"agreement with real accuracies ({acc.target}, {n} of "
                f"{len(result.candidates)} backbones measured)",
                formats={
                    "Kendall tau": ".3f",
                    "weighted tau": ".3f",
                    "top-1 hit": ".0f",
                    "top-1 regret": ".4f",
                },
                note=None
                if n >= MIN_INFORMATIVE
                else f"n = {n}: a rank correlation of {n} backbones is not informative",
            )
        )
    return tables


def cost_table(result: RankResults) -> Table:
    """Cost of each backbone on this hardware (timings as median and interquartile range over the interleaved
    rounds), the Pareto set and the budget verdict, best prediction first."""
    rec, setup = result.recommendation, result.cost_setup
    if rec is None or setup is None:
        raise ValueError("cost_table needs a result with costs (rank_backbones(cost=True))")
    by = result.predicted_by
    measured = [c for c in result.candidates if c.cost is not None]
    order = sorted(measured, key=lambda c: -np.nan_to_num(c.predicted(by), nan=-np.inf))
    rows = []
    for c in order:
        assert c.cost is not None
        verdict = "; ".join(c.over_budget) or "; ".join(
            (["recommended"] if c.name == rec.recommended else []) + [f"kept: {t}" for t in c.budget_ties]
        )
        shown = c.scores.get("learned") if by == "learned" else c.ensemble_rank
        rows.append([c.name, shown, c.cost.images_per_s.format(".0f"), c.cost.latency_ms.format(".1f"),
                     c.cost.peak_memory_mb, c.cost.gflops, c.cost.params / 1e6, "yes" if c.pareto else "",
                     verdict])  # fmt: skip
    timing = setup.timing
    budget = ", ".join(f"{k} {v:g}" for k, v in asdict(rec.budget).items() if v is not None) or "none"
    return Table(
        [
            "backbone",
            "learned score" if by == "learned" else "mean rank",
            "images/s (IQR)",
            "latency ms (IQR)",
            "peak MB",
            "GFLOPs/image",
            "params (M)",
            "Pareto",
            "budget",
        ],  # fmt: skip
        rows,
        title=f"cost on this machine ({setup.device}, {setup.precision}, batch {setup.batch_size}, "
        f"{setup.threads} threads, load {setup.load_avg_1m})",
        formats={
            "learned score": ".4f",
            "mean rank": ".2f",
            "peak MB": ".0f",
            "GFLOPs/image": ".3f",
            "params (M)": ".2f",
        },  # fmt: skip
        note=f"measured in this run: throughput at the batch size and latency at batch 1, timed in "
        f"{timing.get('rounds', '?')} rounds interleaved across the backbones (each round times every "
        f"backbone once, in an order shuffled per round, seed {timing.get('seed', '?')}, after "
        f"{timing.get('warmup', '?')} warm-up rounds): median and interquartile range (IQR) over the rounds; "
        f"peak MB: weights plus peak live tensors of a forward at the batch size (CUDA: the allocator's peak "
        f"above what was allocated before); Pareto: no other backbone predicted at least as well and faster, "
        f"latencies whose IQRs overlap counting as equal; budget: {budget}, a latency or throughput limit "
        f"rejecting only a backbone whose whole IQR is past it and overlaps no backbone within it.",
    )


def rank_report(result: RankResults) -> Report:
    """The report of a rank run: the method and one table per score."""
    ds = result.dataset
    report = Report(f"Transferability ranking: {ds['name']} ({result.split}, {ds['image_size']}px)")
    sources = sorted({str(c.source_predictions) for c in result.candidates})
    sec = report.section("scores", "Scores")
    sec.add_text(
        "Training-free scores on frozen features (higher = more transferable); the ensemble is the mean rank "
        f"over the scores. LEEP/NCE use {', '.join(sources)} source predictions."
    )
    for t in rank_tables(result):
        sec.add_table(t)
    return report
