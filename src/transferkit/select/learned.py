"""Training and evaluating the learned ranker from the results table (``transferkit rank train`` / ``rank
evaluate``), as library functions.

- :func:`load_target_rows`: the measured-accuracy rows of one target (``protocol/metric``) of a results table;
- :func:`train_autoencoder`: the weight autoencoder on a list of backbones;
- :func:`train_ranker`: autoencoder + ranking transformer on the table, saved as a :class:`LearnedRanker`;
- :func:`evaluate_ranker`: leave-one-dataset-out, next to every training-free score of the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import UserError
from transferkit.report import Table
from transferkit.results import (
    ResultRow,
    ResultsTable,
    choose_target,
    rows_of_target,
    scores_by_dataset,
    values_by_dataset,
)
from transferkit.select.options import LearnedRankerOptions
from transferkit.select.pipeline import (
    EmbeddingStore,
    LearnedRanker,
    PairFeatures,
    embed_examples,
    evaluate_lodo,
    model_image_sizes,
    train_learned_ranker,
)
from transferkit.select.trainers import TrainResult, trainers_from

Progress = Callable[[str], None]


def load_target_rows(
    table: ResultsTable, target: str | None = None
) -> tuple[list[ResultRow], list[ResultRow]]:
    """``(rows of the chosen target, every row)`` of ``table``; a missing table is a one-line error."""
    if not table.path.is_file():
        raise UserError(
            f"no results table at {table.path}; run 'transferkit compare' (it appends to runs/performance.json) or "
            "build one with 'transferkit rank benchmark --data digits --backbones ...'"
        )
    rows = table.read()
    chosen = choose_target(rows, target)
    return rows_of_target(rows, chosen), rows


def train_autoencoder(
    backbones: Sequence[str] | dict[str, int],
    options: LearnedRankerOptions,
    out_dir: Path,
    cache_dir: Any = None,
    progress: Progress | None = None,
) -> TrainResult:
    """The weight autoencoder on ``backbones`` (names, or ``{name: image size}``), written to ``out_dir``."""
    sizes = dict(backbones) if isinstance(backbones, dict) else {n: 224 for n in backbones}
    store = EmbeddingStore(options.embedding, root=out_dir / "embeddings", cache_dir=cache_dir)
    vectors = []
    for n in sorted(sizes):
        if progress is not None:
            progress(f"weight statistics of {n}")
        vectors.append(store.model_vector(n, sizes[n]))
    ae, _ = trainers_from(options)
    ae.out_dir = out_dir
    return ae.fit(np.stack(vectors), sorted(sizes))


class PretrainedAutoencoder:
    """Stands in for an AutoencoderTrainer: returns an already trained autoencoder (a folder with model.pt)."""

    def __init__(self, path: str | Path):
        import torch

        from transferkit.select.model_embed import WeightAutoencoder

        file = Path(path) / "model.pt" if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise UserError(f"no trained autoencoder at {path} (expected a folder with model.pt)")
        self.model = WeightAutoencoder.from_checkpoint(torch.load(file, weights_only=False))
        self.out_dir = None

    def fit(self, vectors: np.ndarray, names: Any = None) -> TrainResult:
        return TrainResult(self.model, {"trainer": "autoencoder", "pretrained": True, "epochs": []})


def pair_features(
    rows: Sequence[ResultRow], all_rows: Sequence[ResultRow], options: LearnedRankerOptions
) -> PairFeatures | None:
    """The per-pair features ``options.features`` asks for: the accuracies of ``rows`` (one target) for the
    prior, the ``score`` rows of ``all_rows``; None when it asks for none."""
    if not options.features:
        return None
    scores = scores_by_dataset(all_rows)
    return PairFeatures(options.features, values_by_dataset(rows), scores, sorted(scores), options.offset)


def train_ranker(
    rows: Sequence[ResultRow],
    options: LearnedRankerOptions,
    out_dir: Path,
    cache_dir: Any = None,
    autoencoder: str | Path | None = None,
    progress: Progress | None = None,
    all_rows: Sequence[ResultRow] = (),
) -> tuple[LearnedRanker, dict[str, TrainResult]]:
    """Autoencoder (or the trained one at ``autoencoder``) + ranker on ``rows`` (one target), with the
    per-pair features of ``options.features`` (scores from the ``score`` rows of ``all_rows``); the bundle is
    written to ``out_dir`` (use it with ``transferkit rank --learned_ranker DIR``)."""
    store = EmbeddingStore(options.embedding, root=out_dir / "embeddings", cache_dir=cache_dir)
    ae, make_ranker = trainers_from(options)
    if autoencoder is not None:
        ae = PretrainedAutoencoder(autoencoder)
    features = pair_features(rows, all_rows, options)
    bundle, _, results = train_learned_ranker(
        rows, store, ae, make_ranker(), out_dir=out_dir, progress=progress, features=features
    )
    return bundle, results


def evaluate_ranker(
    rows: Sequence[ResultRow],
    all_rows: Sequence[ResultRow],
    options: LearnedRankerOptions,
    cache_dir: Any = None,
    store_root: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out: the autoencoder trains once (it sees weights, never accuracies), the ranker once
    per held-out dataset; every training-free score of ``all_rows`` is measured on the same datasets."""
    store = EmbeddingStore(options.embedding, root=store_root, cache_dir=cache_dir)
    ae, make_ranker = trainers_from(options)
    _, examples, _ = embed_examples(rows, store, ae, progress)  # the rankers train per fold below
    result = evaluate_lodo(
        examples,
        make_ranker,
        scores_by_dataset(all_rows),
        progress=(lambda k: progress(f"leave-one-dataset-out: holding out {k}")) if progress else None,
        features=pair_features(rows, all_rows, options),
    )
    out = result.to_dict()
    out["datasets"] = [e.dataset for e in examples]
    out["target"] = rows[0].target if rows else None
    out["image_sizes"] = model_image_sizes(rows)
    return out


def lodo_table(result: dict[str, Any], title: str) -> Table:
    """Mean Kendall tau, weighted tau, top-1 hit and regret per method, best Kendall tau first."""
    summary = result["summary"]
    order = sorted(summary, key=lambda m: -np.nan_to_num(summary[m]["kendall_tau"], nan=-9))
    return Table(
        ["method", "datasets", "Kendall tau", "weighted tau", "top-1 hit", "top-1 regret"],
        [
            [
                m,
                summary[m]["datasets"],
                *(summary[m][k] for k in ("kendall_tau", "weighted_tau", "top1_hit", "top1_regret")),
            ]
            for m in order
        ],
        title=title,
        formats={
            "datasets": ".0f",
            "Kendall tau": ".3f",
            "weighted tau": ".3f",
            "top-1 hit": ".3f",
            "top-1 regret": ".4f",
        },
        note="ranker: trained on the other datasets; random: expectation over random orders; the others: "
        "training-free scores of the results table.",
    )
