"""How well a ranking of models matches their real accuracies, and leave-one-dataset-out evaluation of the
learned ranker against the training-free scores.

Metrics of one dataset (predicted scores vs real accuracies of the same models):

- ``kendall_tau``: Kendall's tau-b (``scipy.stats.kendalltau``);
- ``weighted_tau``: ``scipy.stats.weightedtau`` (hyperbolic weights: disagreements among the top models cost
  more), the usual metric of the model-selection literature;
- ``top1_hit``: 1 when the top-scored model is (one of) the most accurate;
- ``top1_regret``: best accuracy minus the accuracy of the top-scored model.

Leave-one-dataset-out (:func:`leave_one_dataset_out`): for each dataset, the ranker is trained on the others
and ranks the held-out dataset's models; every training-free score available for that dataset is measured
the same way, and so is a random ranker (the expectation over random orders: tau 0, top-1 hit ``1/M``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import UserError

log = logging.getLogger(__name__)


def rank_metrics(predicted: Mapping[str, float], truth: Mapping[str, float]) -> dict[str, float]:
    """Agreement of ``predicted[model]`` scores with ``truth[model]`` accuracies over their common models.

    Returns ``kendall_tau``, ``weighted_tau``, ``top1_hit``, ``top1_regret`` and ``n`` (models compared);
    taus are NaN with fewer than 2 models or constant inputs.
    """
    from scipy.stats import kendalltau, weightedtau

    models = [m for m in truth if m in predicted and np.isfinite(predicted[m]) and np.isfinite(truth[m])]
    if not models:
        raise UserError("no model has both a predicted score and a real accuracy")
    p = np.array([predicted[m] for m in models], dtype=np.float64)
    t = np.array([truth[m] for m in models], dtype=np.float64)
    out: dict[str, float] = {"n": float(len(models))}
    if len(models) >= 2 and np.ptp(p) > 0 and np.ptp(t) > 0:
        out["kendall_tau"] = float(kendalltau(p, t).statistic)
        out["weighted_tau"] = float(weightedtau(p, t).statistic)  # (score, accuracy), as the SFDA scripts
    else:
        out["kendall_tau"] = out["weighted_tau"] = float("nan")
    top = int(np.argmax(p))
    out["top1_hit"] = float(t[top] >= t.max() - 1e-12)
    out["top1_regret"] = float(t.max() - t[top])
    return out


def mean_rank_prior(
    truth: Mapping[str, Mapping[str, float]], held_out: str | None, models: Sequence[str] | None = None
) -> dict[str, float]:
    """Data-free prior: ``{model: -mean rank}`` over every dataset of ``truth`` but ``held_out`` (rank 1 = most
    accurate; higher is better), for ``models`` (default: those of ``truth[held_out]``); a model ranked nowhere
    else gets the worst possible score. Never reads ``truth[held_out]``'s values."""
    ranks: dict[str, list[float]] = {}
    for dataset, accs in truth.items():
        if dataset == held_out:
            continue
        names = list(accs)
        order = np.argsort(-np.array([accs[m] for m in names]), kind="stable")
        for rank, i in enumerate(order, start=1):
            ranks.setdefault(names[i], []).append(float(rank))
    worst = -float(max((len(a) for a in truth.values()), default=1)) - 1.0
    wanted = (
        list(models) if models is not None else list(truth[held_out]) if held_out is not None else list(ranks)
    )
    return {m: (-float(np.mean(ranks[m])) if m in ranks else worst) for m in wanted}


def random_ranker_expectation(truth: Mapping[str, float]) -> dict[str, float]:
    """Expected metrics of a ranker that orders the models at random: tau 0, top-1 hit = share of models
    tied for best, regret = best - mean accuracy."""
    t = np.array(list(truth.values()), dtype=np.float64)
    return {
        "kendall_tau": 0.0,
        "weighted_tau": 0.0,
        "top1_hit": float(np.mean(t >= t.max() - 1e-12)),
        "top1_regret": float(t.max() - t.mean()),
        "n": float(len(t)),
    }


@dataclass
class LodoResult:
    """Leave-one-dataset-out results: ``per_dataset[method][dataset] -> metrics`` and the means."""

    per_dataset: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """``method -> mean kendall_tau / weighted_tau / top1_hit / top1_regret`` (NaNs skipped) and
        ``datasets`` (how many datasets the method covers)."""
        out: dict[str, dict[str, float]] = {}
        for method, per in self.per_dataset.items():
            row: dict[str, float] = {"datasets": float(len(per))}
            for key in ("kendall_tau", "weighted_tau", "top1_hit", "top1_regret"):
                vals = [m[key] for m in per.values() if np.isfinite(m.get(key, np.nan))]
                row[key] = float(np.mean(vals)) if vals else float("nan")
            out[method] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "per_dataset": self.per_dataset, **self.details}


def leave_one_dataset_out(
    datasets: Sequence[str],
    truth: Mapping[str, Mapping[str, float]],
    train_and_predict: Callable[[list[str], str], Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LodoResult:
    """Leave-one-dataset-out evaluation.

    Args:
        datasets: dataset keys (at least 2).
        truth: ``truth[dataset][model]`` real accuracies.
        train_and_predict: ``(train datasets, held-out dataset) -> {model: score}``; trains a ranker on the
            former and scores the held-out dataset's models (named ``ranker`` in the results).
        baselines: ``baselines[score][dataset][model]`` training-free scores (datasets without one are
            skipped for that score).
        progress: called with each held-out dataset's key before it is evaluated.
    """
    datasets = list(datasets)
    if len(datasets) < 2:
        raise UserError(
            f"leave-one-dataset-out needs at least 2 datasets in the performance table, got {len(datasets)}"
        )
    result = LodoResult()
    per = result.per_dataset
    for held in datasets:
        if progress is not None:
            progress(held)
        train = [d for d in datasets if d != held]
        predicted = train_and_predict(train, held)
        per.setdefault("ranker", {})[held] = rank_metrics(predicted, truth[held])
        per.setdefault("random", {})[held] = random_ranker_expectation(truth[held])
        for name, values in (baselines or {}).items():
            if held in values and len(set(values[held]) & set(truth[held])) >= 2:
                per.setdefault(name, {})[held] = rank_metrics(values[held], truth[held])
    return result
