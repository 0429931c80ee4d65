"""Performance and score tables: ``dataset x model -> accuracy`` (what the learned ranker learns from) and
``dataset x model -> training-free scores`` (what it is compared with).

Performance table (``runs/performance.json``, schema in ``docs/compare.md``: ``{"schema": 1, "rows": [...]}``,
one row per (dataset, backbone, metric) with ``dataset: {name, fingerprint, ...}``, ``backbone``, ``metric``,
``value``)
    Real use: ``transferkit compare`` runs append one row per (dataset, backbone, protocol) with the measured
    probe / fine-tune accuracy; ``transferkit rank benchmark`` writes one in the same schema from class-subset
    tasks of a dataset, adding to ``dataset`` the spec that rebuilds it (``source``, ``path``, ``image_size``,
    ``classes``). :func:`read_performance_rows` reads rows as :class:`PerfRow` (``dataset``: the dataset
    fingerprint, ``model``, ``accuracy``, ``metric``, ``data``: the ``dataset`` object).

Score table (``runs/transferability.json``)
    ``transferkit rank`` appends the training-free scores it computed, one row per (dataset, backbone):
    ``{"dataset": fingerprint, "dataset_name", "model", "split", "data": spec, "scores": {name: value}}``. The
    ``data`` spec also tells the learned ranker where a dataset of a compare row lives.

:func:`synthetic_ranking_examples` makes a small synthetic table directly in embedding space (for tests and
for trying the ranker without compare runs): model codes and dataset tokens are noisy linear images of
latent model/dataset factors, and accuracy = ``sigmoid(quality_m + u_m . v_d)``, so the ranking is
learnable from the embeddings but not from either alone.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import UserError
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)

TABLE_VERSION = 1


@dataclass
class PerfRow:
    """One measured accuracy of ``model`` on ``dataset`` (a stable key), under ``metric``."""

    dataset: str
    model: str
    accuracy: float
    metric: str = "accuracy"
    dataset_name: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The row in the shared performance-table schema (``docs/compare.md``): ``dataset`` is an object
        with ``name`` and ``fingerprint`` (our key), plus the spec that rebuilds the dataset."""
        dataset = {**self.data, "name": self.dataset_name or self.dataset, "fingerprint": self.dataset}
        return {
            "dataset": dataset,
            "backbone": self.model,
            "metric": self.metric,
            "value": self.accuracy,
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------- reading
def _row_from_dict(d: Mapping[str, Any]) -> PerfRow | None:
    """A :class:`PerfRow` from one row of the shared schema (``dataset`` object with ``fingerprint``,
    ``backbone``, ``metric``, ``value``); None when a field is missing or the value is not a finite number."""
    data = d.get("dataset")
    model = d.get("backbone")
    value = d.get("value")
    if not isinstance(data, Mapping) or not data.get("fingerprint") or not isinstance(model, str):
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    known = {"dataset", "backbone", "metric", "value"}
    return PerfRow(
        dataset=str(data["fingerprint"]),
        model=model,
        accuracy=float(value),
        metric=str(d.get("metric") or "accuracy"),
        dataset_name=str(data.get("name") or data["fingerprint"]),
        data={k: v for k, v in data.items() if k not in ("name", "fingerprint")},
        extra={k: v for k, v in d.items() if k not in known},
    )


def _rows_of(obj: Any) -> list[Mapping[str, Any]]:
    if isinstance(obj, Mapping) and isinstance(obj.get("rows"), list):
        return [r for r in obj["rows"] if isinstance(r, Mapping)]
    return []


def read_performance_rows(path: str | Path, metric: str | None = None) -> list[PerfRow]:
    """Rows of a performance table file (``[]`` when it does not exist); ``metric`` keeps only that metric."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the performance table {path}: {e}") from None
    rows = [r for r in (_row_from_dict(d) for d in _rows_of(obj)) if r is not None]
    skipped = len(_rows_of(obj)) - len(rows)
    if skipped:
        log.info("%s: %d rows without dataset/model/accuracy ignored", path, skipped)
    if metric is not None:
        rows = [r for r in rows if r.metric == metric]
    return rows


def write_performance_rows(path: str | Path, rows: Iterable[PerfRow], replace: bool = True) -> Path:
    """Append ``rows`` to the table at ``path`` (atomically); with ``replace`` a row with the same
    ``(dataset, model, metric)`` is replaced. Rows of other writers are kept as they are."""
    path = Path(path)
    existing: Any = {"schema": TABLE_VERSION, "rows": []}
    if path.is_file():
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict) or not isinstance(existing.get("rows"), list):
            raise UserError(f"{path} is not a performance table ({{'schema', 'rows'}}); fix or remove it")
    rows = list(rows)
    new = [r.to_dict() for r in rows]
    keys = {(r.dataset, r.model, r.metric) for r in rows}
    kept = []
    for d in existing.get("rows", []):
        parsed = _row_from_dict(d) if isinstance(d, Mapping) else None
        if replace and parsed is not None and (parsed.dataset, parsed.model, parsed.metric) in keys:
            continue
        kept.append(d)
    existing["rows"] = kept + new
    return atomic_write_json(path, existing)


def truth_by_dataset(rows: Sequence[PerfRow]) -> dict[str, dict[str, float]]:
    """``{dataset: {model: accuracy}}`` (the last row wins for a repeated pair)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r.dataset, {})[r.model] = r.accuracy
    return out


def choose_metric(rows: Sequence[PerfRow], metric: str | None = None) -> str:
    """``metric`` if given (validated), else the metric with the most rows."""
    metrics: dict[str, int] = {}
    for r in rows:
        metrics[r.metric] = metrics.get(r.metric, 0) + 1
    if not metrics:
        raise UserError("the performance table has no usable rows (dataset, model, accuracy)")
    if metric is not None:
        if metric not in metrics:
            raise UserError(f"no rows with metric '{metric}'; the table has {sorted(metrics)}")
        return metric
    return max(metrics, key=lambda m: metrics[m])


# ---------------------------------------------------------------------------------------------- scores
def read_score_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    obj = json.loads(path.read_text())
    return [
        r for r in _rows_of(obj) if "dataset" in r and "model" in r and isinstance(r.get("scores"), Mapping)
    ]


def write_score_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append score rows (replacing the same ``(dataset, model, split)``) to the score table at ``path``."""
    path = Path(path)
    keys = {(r["dataset"], r["model"], r.get("split")) for r in rows}
    kept = [r for r in read_score_rows(path) if (r["dataset"], r["model"], r.get("split")) not in keys]
    return atomic_write_json(path, {"schema": TABLE_VERSION, "rows": kept + [dict(r) for r in rows]})


def scores_by_dataset(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{score: {dataset: {model: value}}}`` from score rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        for name, value in r["scores"].items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.setdefault(name, {}).setdefault(str(r["dataset"]), {})[str(r["model"])] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- synthetic
def synthetic_ranking_examples(
    num_datasets: int = 12,
    num_models: int = 8,
    model_dim: int = 16,
    data_dim: int = 8,
    tokens: int = 16,
    latent: int = 3,
    interaction: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> list[Any]:
    """A synthetic performance table as :class:`~transferkit.select.ranker.RankExample` lists.

    Model ``m`` has latent quality ``q_m`` and factors ``u_m``; dataset ``d`` has factors ``v_d``. Codes are
    ``[q_m, u_m] A + noise`` (``model_dim``), dataset tokens ``v_d B + N(0, 0.3)`` (``tokens`` of them,
    ``data_dim``), and accuracy ``sigmoid(q_m + interaction * u_m . v_d)``.
    """
    from transferkit.select.ranker import RankExample

    rng = np.random.default_rng(seed)
    q = rng.normal(0, 1, num_models)
    u = rng.normal(0, 1, (num_models, latent))
    v = rng.normal(0, 1, (num_datasets, latent))
    a = rng.normal(0, 1, (latent + 1, model_dim))
    b = rng.normal(0, 1, (latent, data_dim))
    codes = np.concatenate([q[:, None], u], axis=1) @ a + noise * rng.normal(size=(num_models, model_dim))
    names = [f"model-{i}" for i in range(num_models)]
    examples = []
    for d in range(num_datasets):
        toks = v[d] @ b + 0.3 * rng.normal(size=(tokens, data_dim))
        acc = 1 / (1 + np.exp(-(q + interaction * u @ v[d])))
        examples.append(
            RankExample(f"synthetic-{d}", toks.astype(np.float32), codes.astype(np.float32), acc, names)
        )
    return examples
