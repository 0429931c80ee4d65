"""Hyper-parameter plumbing shared by the task modules."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def set_hparam(module: L.LightningModule, key: str, value: Any) -> None:
    """Set ``module.hparams[key]`` and its logged (initial) copy, which must agree or Lightning refuses to
    merge the model's and the datamodule's hyper-parameters."""
    module.hparams[key] = value
    if getattr(module, "_hparams_initial", None) is not None:
        module._hparams_initial[key] = value


def hparams_from_checkpoint(module: L.LightningModule, keys: Iterable[str]) -> None:
    """Fill each unset ``module.hparams[key]`` from the checkpoint its trainer is about to load.

    Lets vocabularies and sizes saved in the checkpoint decide the shapes of layers built before loading.
    Nothing happens without a trainer, a checkpoint file, or a readable one.
    """
    trainer = module._trainer
    ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
    if not ckpt or not Path(str(ckpt)).is_file():
        return
    try:
        hp = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    except Exception as e:  # an unreadable checkpoint fails again, with Lightning's message, when loaded
        log.debug("could not read hyper-parameters of %s: %s", ckpt, e)
        return
    for key in keys:
        if hp.get(key) is not None and module.hparams.get(key) is None:
            set_hparam(module, key, hp[key])
