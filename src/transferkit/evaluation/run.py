"""Open a classification run directory: its config, datamodule, checkpoint and cached predictions.

``runs/<name>/`` is what ``transferkit fit`` writes (``config.yaml``, ``checkpoints/{best,last}.ckpt``). The
datamodule is rebuilt from ``config.yaml`` (``data.class_path`` + ``init_args``), the model with the task's
``load_from_checkpoint``. Logits of a split are computed once and cached in
``<run>/evaluation/predictions_<split>.npz``, keyed by the checkpoint file (path, size, mtime) and the
split's data fingerprint, so evaluation and analysis never re-run the model over the same images.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from transferkit.errors import UserError
from transferkit.utils.runs import checkpoint_path, run_checkpoints

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(f"cannot import '{class_path}' named in the run's config.yaml") from None


@dataclass
class Run:
    """A classification run opened for evaluation/analysis."""

    path: Path
    config: dict[str, Any]
    checkpoint: Path
    model: Any
    datamodule: Any

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        names = self.model.hparams.get("class_names") or self.datamodule.class_names
        return [str(n) for n in names]

    def checkpoint_key(self) -> str:
        st = self.checkpoint.stat()
        return f"{self.checkpoint.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def cache_key(self, split: str, extra: str = "") -> str:
        blob = f"{self.checkpoint_key()}|{self.datamodule.fingerprint(split)}|{extra}".encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()


def resolve_checkpoint(run_dir: Path, ckpt: str) -> Path:
    path = checkpoint_path(run_dir, ckpt)
    if not path.is_file():
        have = run_checkpoints(run_dir)
        raise UserError(
            f"no checkpoint '{path}'; the run has {have or 'none'} (train it with transferkit fit, or pass "
            "--ckpt last / a .ckpt path)"
        )
    return path


def open_run(run_dir: str | Path, ckpt: str = "best", device: str = "auto") -> Run:
    """Load ``run_dir``'s datamodule (from config.yaml) and its classification model (from ``ckpt``:
    ``best``, ``last`` or a path), in eval mode on ``device``."""
    run_dir = Path(run_dir).expanduser()
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(
            f"'{run_dir}' is not a run directory (no config.yaml); pass --run runs/<name> from transferkit fit"
        )
    config = yaml.safe_load(cfg_file.read_text()) or {}
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    if "class_path" not in model_cfg or "class_path" not in data_cfg:
        raise UserError(f"{cfg_file} has no model/data class_path; it was not written by transferkit fit")
    from transferkit.tasks.classification import ImageClassifier

    model_cls = _import(model_cfg["class_path"])
    if not (isinstance(model_cls, type) and issubclass(model_cls, ImageClassifier)):
        hint = ""
        if model_cfg["class_path"].endswith("DinoContinuation"):
            hint = (
                f"; a self-supervised run saves its backbone to {run_dir / 'backbone'}: fit a linear probe on it "
                f"(--model.backbone.name {run_dir / 'backbone'}) and evaluate that run"
            )
        raise UserError(
            f"run '{run_dir.name}' trains {model_cfg['class_path']}, not an image classifier{hint}"
        )
    checkpoint = resolve_checkpoint(run_dir, ckpt)
    dm_cls = _import(data_cfg["class_path"])
    datamodule = dm_cls(**(data_cfg.get("init_args") or {}))
    datamodule.prepare_data()
    datamodule.setup("test")
    model = model_cls.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    model.eval().to(resolve_device(device))
    return Run(path=run_dir, config=config, checkpoint=checkpoint, model=model, datamodule=datamodule)


def iterate_split(run: Run, split: str, batch_size: int | None = None, max_images: int | None = None):
    """Yield ``(images (B, 3, S, S) in [0, 1], labels (B,))`` of ``split`` with the eval transform, in order
    (the first ``max_images`` of a fixed stratified-by-order subset when given)."""
    ds = run.datamodule.dataset(split)
    if max_images is not None and max_images < len(ds):
        # an evenly spaced subset keeps every class of sorted/stratified splits represented
        idx = np.linspace(0, len(ds) - 1, num=max_images).round().astype(np.int64)
        ds = ds.subset(np.unique(idx))
    from torch.utils.data import DataLoader

    from transferkit.data.sources import collate_drop_none

    loader = DataLoader(
        ds,
        batch_size=batch_size or run.datamodule.eval_batch_size,
        shuffle=False,
        collate_fn=collate_drop_none,
    )
    for batch in loader:
        if batch is not None:
            yield batch


def progress(description: str, total: int | None = None):
    """A rich progress bar (transient) for long loops."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


@torch.inference_mode()
def predict_split(
    run: Run, split: str = "test", *, batch_size: int | None = None, use_cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) float32 and labels (N,) int64 of ``split``, from the cache when it matches."""
    cache_dir = run.path / "evaluation"
    cache = cache_dir / f"predictions_{split}.npz"
    key = run.cache_key(split)
    if use_cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                log.info("using cached %s predictions (%s)", split, cache)
                return torch.from_numpy(z["logits"]), torch.from_numpy(z["labels"])
    device = next(run.model.parameters()).device
    logits, labels = [], []
    n = len(run.datamodule.dataset(split))
    bs = batch_size or run.datamodule.eval_batch_size
    with progress(f"predicting {split}") as bar:
        task = bar.add_task(f"predicting {split}", total=-(-n // bs))
        for images, y in iterate_split(run, split, batch_size):
            logits.append(run.model(images.to(device)).float().cpu())
            labels.append(y)
            bar.advance(task)
    out_logits, out_labels = torch.cat(logits), torch.cat(labels).long()
    import io

    from transferkit.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, logits=out_logits.numpy(), labels=out_labels.numpy(), key=np.array(key))
    atomic_write_bytes(cache, buf.getvalue())
    return out_logits, out_labels


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
