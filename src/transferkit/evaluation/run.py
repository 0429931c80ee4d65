"""Predictions of a loaded run (:func:`transferkit.runs.load_run`) over a split, computed once.

Logits of a split are cached in ``<run>/evaluation/predictions_<split>.npz``, keyed by the checkpoint file
(path, size, mtime) and the split's data fingerprint, so evaluation and analysis never re-run the model over
the same images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import UserError
from transferkit.runs import LoadedRun, RunDir, load_run

log = logging.getLogger(__name__)


def load_classifier(run_dir: str | Path, ckpt_path: str = "best", device: str = "auto") -> LoadedRun:
    """:func:`transferkit.runs.load_run` of a run that trains an image classifier; any other task is a one-line
    error saying what to do instead (before its checkpoint is read)."""
    import importlib

    from transferkit.tasks.classification import ImageClassifier
    from transferkit.tasks.ssl_dino import DinoContinuation

    run = RunDir.open(run_dir)
    model = run.read_config().get("model") or {}
    class_path = str(model.get("class_path", "")) if isinstance(model, dict) else ""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"cannot import the task '{class_path}' named in {run.config_file()}") from None
    if not (isinstance(cls, type) and issubclass(cls, ImageClassifier)):
        hint = ""
        if isinstance(cls, type) and issubclass(cls, DinoContinuation):
            hint = (
                f"; a self-supervised run saves its backbone to {run.path / 'backbone'}: fit a linear probe on it "
                f"(--model.backbone.name {run.path / 'backbone'}) and evaluate that run"
            )
        raise UserError(f"run '{run.name}' trains {class_path}, not an image classifier{hint}")
    return load_run(run.path, ckpt_path=ckpt_path, device=device)


def iterate_split(run: LoadedRun, split: str, batch_size: int | None = None, max_images: int | None = None):
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
    run: LoadedRun, split: str = "test", *, batch_size: int | None = None, use_cache: bool = True
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
