"""The ranking benchmark (``transferkit rank benchmark``): a results table of real measurements from class-subset
tasks of a dataset, for training and evaluating rankers when there are not enough ``compare`` runs yet.

For every backbone the train/val/test features are extracted once (or read from the cache); for every task (a
random ``K``-class subset, a :class:`~transferkit.data.spec.DataSpec` with ``classes``) the backbone's accuracy is
measured with the probe module's logistic-regression protocol
(:func:`transferkit.probe.linear.train_logistic_regression`: C swept on train, chosen on val, reported on test)
and every training-free score is computed on the task's train features. Rows are marked with their protocol
(``logistic_regression`` and ``score``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from transferkit.backbones import backbone_options, resolve_backbone
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions, get_features
from transferkit.probe.linear import LogRegConfig, train_logistic_regression
from transferkit.report import Table
from transferkit.results import ResultRow, dataset_entry
from transferkit.select.scores import Features, compute_scores
from transferkit.select.source_preds import source_predictions

log = logging.getLogger(__name__)


def class_subset_tasks(
    class_names: Sequence[str], tasks: int, classes_per_task: int, seed: int = 0
) -> list[list[str]]:
    """``tasks`` distinct random subsets of ``classes_per_task`` class names (fixed ``seed``)."""
    if not 2 <= classes_per_task <= len(class_names):
        raise UserError(f"classes_per_task must be between 2 and {len(class_names)} (the dataset's classes)")
    if tasks < 1:
        raise UserError(f"tasks must be >= 1, got {tasks}")
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(tasks * 50):
        if len(out) == tasks:
            break
        pick = tuple(sorted(rng.choice(len(class_names), classes_per_task, replace=False).tolist()))
        if pick not in seen:
            seen.add(pick)
            out.append([str(class_names[c]) for c in pick])
    return out


def run_benchmark(
    spec: DataSpec,
    backbones: Sequence[str],
    *,
    tasks: int = 8,
    classes_per_task: int = 4,
    logreg: LogRegConfig | None = None,
    extract: ExtractOptions | None = None,
    seed: int = 0,
    patch_size: int | None = None,
    run: str | None = None,
    on_backbone: Callable[[str], None] | None = None,
) -> tuple[list[ResultRow], dict[str, dict[str, float]]]:
    """Measure every backbone on every class-subset task of ``spec``.

    Returns the results-table rows (``logistic_regression`` test top-1 and every ``score``, per task and
    backbone) and ``{task name: {backbone: test top-1}}``.
    """
    extract = extract or ExtractOptions()
    logreg = logreg or LogRegConfig()
    dm = spec.build()
    subsets = class_subset_tasks(dm.class_names, tasks, classes_per_task, seed)
    task_specs = [spec.with_classes(c) for c in subsets]
    entries = [dataset_entry(t.describe()) for t in task_specs]
    options = backbone_options(list(backbones), patch_size)
    rows: list[ResultRow] = []
    accs: dict[str, dict[str, float]] = {}
    device = extract.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for name in backbones:
        bb = resolve_backbone(name, dm.image_size, seed=seed, **options[name])
        feats = {s: get_features(bb, dm, s, **extract.kwargs()) for s in ("train", "val", "test")}
        x = {s: np.asarray(fs.features) for s, fs in feats.items()}
        y = {s: np.asarray(fs.labels) for s, fs in feats.items()}
        extra = {"num_params": int(bb.num_params()), "pretrained": bool(bb.pretrained)}
        for t_spec, entry in zip(task_specs, entries):
            keep = t_spec.class_indices(dm)
            remap = {c: i for i, c in enumerate(keep)}
            mask = {s: np.isin(y[s], keep) for s in y}
            probe = train_logistic_regression(
                {s: torch.from_numpy(np.ascontiguousarray(x[s][mask[s]], dtype=np.float32)) for s in x},
                {s: torch.tensor([remap[int(c)] for c in y[s][mask[s]]], dtype=torch.long) for s in y},
                len(keep),
                logreg,
                device=device,
            )
            assert probe.test is not None
            acc = float(probe.test["acc1"])
            accs.setdefault(entry["name"], {})[name] = acc
            rows.append(
                ResultRow(
                    entry,
                    name,
                    "logistic_regression",
                    "top1",
                    acc,
                    "test",
                    run,
                    extra={**extra, "c": probe.c},
                )
            )
            tr_x, tr_y = x["train"][mask["train"]], y["train"][mask["train"]]
            fx = Features(tr_x)
            res = compute_scores(
                fx, tr_y, source_probs_fn=lambda fx=fx, tr_y=tr_y: source_predictions(fx, tr_y, seed=seed)
            )
            for score, r in res.items():
                if np.isfinite(r.value):
                    rows.append(
                        ResultRow(entry, name, "score", score, float(r.value), "train", run, extra=extra)
                    )
        del bb, feats
        if on_backbone is not None:
            on_backbone(name)
    return rows, accs


def benchmark_table(accs: dict[str, dict[str, float]], backbones: Sequence[str]) -> Table:
    """Backbones x tasks: test top-1 of the logistic-regression probe, and the mean over tasks."""
    tasks = list(accs)
    cols = [f"T{i}" for i in range(1, len(tasks) + 1)]
    return Table(
        ["backbone", *cols, "mean"],
        [[n, *(accs[t][n] for t in tasks), float(np.mean([accs[t][n] for t in tasks]))] for n in backbones],
        title="benchmark: logistic-regression probe, test top-1 per class-subset task",
        formats={c: ".3f" for c in [*cols, "mean"]},
        note="; ".join(f"{c} = {t}" for c, t in zip(cols, tasks)),
    )
