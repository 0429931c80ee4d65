"""Prediction writers: ``transferkit predict`` output files, written atomically into the run.

:class:`PredictionWriter` is the one base: a Lightning ``BasePredictionWriter`` that streams the lines of every
predicted batch into a temporary file next to the target and renames it into place (after an fsync) when
prediction ends, one file per rank under DDP. Subclasses say what a batch's lines are:

- :class:`GroundingPredictionWriter`: detections as grounding JSONL (``predictions.jsonl``), for the detection
  task and the vision-language grounding task;
- :class:`ClassificationPredictionWriter`: ``predictions.csv`` (path, top-k classes and probabilities).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from transferkit.errors import UserError

log = logging.getLogger(__name__)


class PredictionWriter(BasePredictionWriter):
    """Streams prediction lines into ``<run>/<filename>`` (or ``output``), atomically, one file per rank.

    Args:
        output: where to write; default ``<trainer.default_root_dir>/<filename>``.
    """

    filename = "predictions.txt"

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._file: Any = None
        self._tmp: Path | None = None
        self.path: Path | None = None
        self.count = 0

    # ------------------------------------------------------------------ what subclasses say
    def header(self, pl_module: L.LightningModule) -> list[str]:
        """Lines written first (e.g. a CSV header)."""
        return []

    def lines(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, indices: Any
    ) -> list[str]:
        """The lines of one predicted batch (``predict_step``'s return value; ``indices``: the batch's dataset
        indices, when Lightning tracks them)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def _target(self, trainer: L.Trainer) -> Path:
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / self.filename
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path = self._target(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._file = self._tmp.open("w", encoding="utf-8", newline="")
        for line in self.header(pl_module):
            self._file.write(line + "\n")
        self.count = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for line in self.lines(trainer, pl_module, prediction, batch_indices):
            self._file.write(line + "\n")
            self.count += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        log.info("wrote %d prediction records to %s", self.count, self.path)


class GroundingPredictionWriter(PredictionWriter):
    """Detections as grounding JSONL, one record per image::

        {"images": ["/abs/img.png"], "width": W, "height": H, "objects": [{"bbox_2d": [x1, y1, x2, y2],
         "desc": "red circle/large/visible", "category": "red circle", "score": 0.97}], ...}

    ``predict_step`` returns the records (boxes in absolute pixels of the original image, objects sorted by
    score; a vision-language task adds its raw ``response``); objects scored below ``score_threshold`` and
    beyond ``max_detections`` are dropped here.

    Args:
        output: where to write; default ``<trainer.default_root_dir>/predictions.jsonl``.
        score_threshold: keep objects with at least this score (objects without a score are kept).
        max_detections: keep at most this many objects per image.
    """

    filename = "predictions.jsonl"

    def __init__(
        self, output: str | None = None, score_threshold: float = 0.5, max_detections: int = 100
    ) -> None:
        super().__init__(output)
        if not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"score_threshold is a probability in [0, 1], got {score_threshold}")
        if max_detections < 1:
            raise UserError(f"max_detections must be >= 1, got {max_detections}")
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def lines(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, indices: Any
    ) -> list[str]:
        out = []
        for record in prediction:
            objects = [o for o in record["objects"] if o.get("score", 1.0) >= self.score_threshold]
            out.append(json.dumps({**record, "objects": objects[: self.max_detections]}, ensure_ascii=False))
        return out


class ClassificationPredictionWriter(PredictionWriter):
    """``predictions.csv``: one row per image: ``path`` (the image file, or ``predict[i]`` for in-memory data),
    ``label`` (the true class, when the predicted images have labels: the test split), ``prediction``,
    ``probability``, then ``top{i}``/``p{i}`` for the top-k classes. Images skipped as unreadable have no row;
    their number is logged.

    Args:
        output: where to write; default ``<trainer.default_root_dir>/predictions.csv``.
        top_k: classes per image.
    """

    filename = "predictions.csv"

    def __init__(self, output: str | None = None, top_k: int = 5) -> None:
        super().__init__(output)
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self._dataset: Any = None

    def _k(self, pl_module: L.LightningModule) -> int:
        return min(self.top_k, int(pl_module.hparams.num_classes))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        self._dataset = getattr(loader, "dataset", None)
        super().on_predict_start(trainer, pl_module)

    def _labeled(self) -> bool:
        return bool(getattr(self._dataset, "labeled", False))

    def header(self, pl_module: L.LightningModule) -> list[str]:
        cols = ["path", *(["label"] if self._labeled() else []), "prediction", "probability"]
        for i in range(1, self._k(pl_module) + 1):
            cols += [f"top{i}", f"p{i}"]
        return [_csv_line(cols)]

    def lines(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, indices: Any
    ) -> list[str]:
        if prediction is None:
            return []
        names = [str(n) for n in (pl_module.hparams.class_names or range(int(pl_module.hparams.num_classes)))]
        k = self._k(pl_module)
        probs = prediction["probs"].float().cpu()
        top_p, top_i = probs.topk(k, dim=-1)
        # the batch's own image indices (a skipped image leaves the batch shorter than Lightning's indices)
        index = prediction.get("index")
        index = index.tolist() if index is not None else (list(indices) if indices is not None else None)
        images = getattr(self._dataset, "images", self._dataset)
        out = []
        for row_i, (ps, idx) in enumerate(zip(top_p.tolist(), top_i.tolist())):
            i = int(index[row_i]) if index is not None and row_i < len(index) else None
            row: list[Any] = [_path_of(images, i) if i is not None else ""]
            if self._labeled():
                row.append(names[int(images.targets[i])] if i is not None else "")
            row += [names[idx[0]], f"{ps[0]:.6f}"]
            for p, j in zip(ps, idx):
                row += [names[j], f"{p:.6f}"]
            out.append(_csv_line(row))
        return out

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = (
            len(self._dataset) if self._dataset is not None and hasattr(self._dataset, "__len__") else None
        )
        limited = trainer.limit_predict_batches not in (None, 1.0)
        if total is not None and not limited and trainer.world_size == 1 and self.count < total:
            log.warning(
                "%d of %d images have no prediction: they were skipped as unreadable (see the warnings above)",
                total - self.count,
                total,
            )
        super().on_predict_end(trainer, pl_module)


def _path_of(dataset: Any, index: int) -> str:
    """The image file behind item ``index`` of a classification dataset, else ``predict[index]``."""
    paths = getattr(dataset, "paths", None)
    if paths is not None and 0 <= index < len(paths):
        return str(paths[index])
    return f"predict[{index}]"


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()
