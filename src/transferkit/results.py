"""The results table: every measured number of a backbone on a dataset, from every command, in one file.

``<runs_dir>/performance.json``::

    {"schema": 2,
     "rows": [{"dataset": {"key": "754987b5...", "name": "digits", "spec": {"init_args": {...}, "classes": null},
                           "num_classes": 10, "num_train": 1077, "image_size": 64},
               "backbone": "minilm-l6", "protocol": "linear_probe", "metric": "top1", "split": "test",
               "value": 0.875, "run": "compare", "time": "2026-12-01T10:00:00",
               "pretrained": true, "modality": "language", "num_params": 22861056}]}

Every row says which **protocol** produced it (:data:`PROTOCOLS`): a linear probe (SGD grid), a logistic
regression, kNN, a fine-tune, or a training-free ``score`` (``metric`` is then the score's name). ``dataset.key``
is :meth:`transferkit.data.spec.DataSpec.key` (a content hash) and ``dataset.spec`` rebuilds the dataset, so
the ranker can find the images of any row.

Writers take an exclusive ``fcntl`` lock on ``performance.json.lock`` and replace the file atomically
(readers never see a partial table); a row replaces an earlier one with the same dataset key, backbone,
protocol, metric and split.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import UserError
from transferkit.utils.io import atomic_write_json, file_lock
from transferkit.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)

SCHEMA = 2
TABLE_FILE = "performance.json"
#: protocol -> what produced the number
PROTOCOLS = {
    "linear_probe": "linear heads on frozen features, SGD grid (pooling x blocks x LR), best on val",
    "logistic_regression": "L-BFGS logistic regression on frozen features, C chosen on val",
    "knn": "weighted cosine kNN on frozen final-layer features, k chosen on val",
    "finetune": "full fine-tune (transferkit fit), best checkpoint on val",
    "score": "training-free transferability score of the frozen features (metric = score name)",
}


@dataclass
class ResultRow:
    """One measured number of ``backbone`` on a dataset (see the module docstring for the fields)."""

    dataset: dict[str, Any]
    backbone: str
    protocol: str
    metric: str
    value: float
    split: str = "test"
    run: str | None = None
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol '{self.protocol}'; known: {', '.join(PROTOCOLS)}")
        if not self.dataset.get("key"):
            raise UserError("a results row needs dataset.key")

    @property
    def dataset_key(self) -> str:
        return str(self.dataset["key"])

    @property
    def dataset_name(self) -> str:
        return str(self.dataset.get("name") or self.dataset["key"])

    @property
    def target(self) -> str:
        """``protocol/metric``: what the row measures (e.g. ``linear_probe/top1``, ``score/logme``)."""
        return f"{self.protocol}/{self.metric}"

    def identity(self) -> tuple[str, str, str, str, str]:
        return (self.dataset_key, self.backbone, self.protocol, self.metric, self.split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "backbone": self.backbone,
            "protocol": self.protocol,
            "metric": self.metric,
            "split": self.split,
            "value": self.value,
            "run": self.run,
            "time": self.time,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResultRow | None:
        """A row of the file; None when a field is missing or the value is not a finite number."""
        data, value = d.get("dataset"), d.get("value")
        if not isinstance(data, Mapping) or not data.get("key") or not isinstance(d.get("backbone"), str):
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return None
        if d.get("protocol") not in PROTOCOLS or not isinstance(d.get("metric"), str):
            return None
        known = {"dataset", "backbone", "protocol", "metric", "split", "value", "run", "time"}
        return cls(
            dataset=dict(data),
            backbone=str(d["backbone"]),
            protocol=str(d["protocol"]),
            metric=str(d["metric"]),
            value=float(value),
            split=str(d.get("split") or "test"),
            run=d.get("run"),
            time=str(d.get("time") or ""),
            extra={k: v for k, v in d.items() if k not in known},
        )


def dataset_entry(described: Mapping[str, Any]) -> dict[str, Any]:
    """The ``dataset`` object of a row from :meth:`DataSpec.describe`."""
    return {
        "key": described["key"],
        "name": described["name"],
        "spec": described["spec"],
        "num_classes": described["num_classes"],
        "num_train": described["counts"]["train"],
        "image_size": described["image_size"],
    }


class ResultsTable:
    """The results table file at ``path`` (default ``<runs_dir>/performance.json``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    @classmethod
    def of_runs_dir(cls, runs_dir: str | Path, path: str | Path | None = None) -> ResultsTable:
        return cls(path if path is not None else Path(runs_dir) / TABLE_FILE)

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"schema": SCHEMA, "rows": []}
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(
                f"the results table {self.path} is not valid JSON ({e}); fix or remove it"
            ) from None
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise UserError(f"{self.path} is not a transferkit results table (expected {{'schema', 'rows'}})")
        if table.get("schema") != SCHEMA:
            raise UserError(
                f"{self.path} has schema {table.get('schema')!r}; this transferkit reads schema {SCHEMA} (rows "
                "carry a protocol and a dataset key): move the old file away and re-run the commands"
            )
        return table

    def read(
        self, *, protocol: str | None = None, metric: str | None = None, dataset_key: str | None = None
    ) -> list[ResultRow]:
        """The table's valid rows (``[]`` when there is no file), optionally filtered."""
        raw = self._load()["rows"]
        rows = [r for r in (ResultRow.from_dict(d) for d in raw if isinstance(d, Mapping)) if r is not None]
        if len(rows) != len(raw):
            log.warning("%s: %d malformed rows ignored", self.path, len(raw) - len(rows))
        return [
            r
            for r in rows
            if (protocol is None or r.protocol == protocol)
            and (metric is None or r.metric == metric)
            and (dataset_key is None or r.dataset_key == dataset_key)
        ]

    def append(self, rows: Iterable[ResultRow], replace: bool = True) -> Path:
        """Append ``rows`` under the lock; with ``replace``, earlier rows with the same identity go (only global
        rank 0 of a launcher-started job writes: every rank computed the same rows)."""
        rows = list(rows)
        if not is_rank_zero():
            return self.path
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            table = self._load()
            keys = {r.identity() for r in rows}
            kept = []
            for d in table["rows"]:
                old = ResultRow.from_dict(d) if isinstance(d, Mapping) else None
                if replace and old is not None and old.identity() in keys:
                    continue
                kept.append(d)
            table["rows"] = kept + [r.to_dict() for r in rows]
            table["schema"] = SCHEMA
            atomic_write_json(self.path, table)
        return self.path


# ---------------------------------------------------------------------------------------------- views
def values_by_dataset(rows: Sequence[ResultRow]) -> dict[str, dict[str, float]]:
    """``{dataset key: {backbone: value}}`` (the last row wins for a repeated pair)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r.dataset_key, {})[r.backbone] = r.value
    return out


def scores_by_dataset(rows: Sequence[ResultRow]) -> dict[str, dict[str, dict[str, float]]]:
    """``{score: {dataset key: {backbone: value}}}`` of the ``score`` rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if r.protocol == "score":
            out.setdefault(r.metric, {}).setdefault(r.dataset_key, {})[r.backbone] = r.value
    return out


def choose_target(rows: Sequence[ResultRow], target: str | None = None) -> str:
    """``target`` (``protocol/metric``, validated) or, of the accuracy rows, the target with the most rows."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.protocol != "score":
            counts[r.target] = counts.get(r.target, 0) + 1
    if not counts:
        raise UserError("the results table has no measured accuracies (compare or rank benchmark rows)")
    if target is not None:
        if target not in counts:
            raise UserError(f"no rows measure '{target}'; the table has {sorted(counts)}")
        return target
    return max(counts, key=lambda t: (counts[t], t == "linear_probe/top1"))


def rows_of_target(rows: Sequence[ResultRow], target: str) -> list[ResultRow]:
    protocol, _, metric = target.partition("/")
    return [r for r in rows if r.protocol == protocol and r.metric == metric]
