"""Train and eval modes during training, decided in one place.

``from_pretrained`` returns models in eval mode and Lightning (2.x) keeps whatever mode each module is in, so
a task that does nothing trains a Hugging Face backbone with its dropout off. :func:`apply_train_modes` puts
everything in train mode and then every *frozen part* in eval mode, so frozen features see no dropout and
update no BatchNorm statistics. A frozen part is a submodule with parameters, none of which trains, that no
gradient passes through: a linear probe's backbone, a DINO teacher, a frozen vision tower before a trained
LLM, the first N blocks of a ViT. Frozen layers between trained ones are not frozen parts and keep train
mode, as in peft's LoRA fine-tuning: the blocks of a LoRA-adapted backbone, or the frozen blocks of a
language model whose new PatchEmbed trains through them (:meth:`Backbone.gradient_free_names
<transferkit.backbones.base.Backbone.gradient_free_names>`).

Where Lightning looks: a fit calls ``configure_model`` before its model summary (a callback's ``on_fit_start``)
and before ``FitLoop.on_run_start``, which warns of every module in eval mode, so every task sets its modes at
the end of ``configure_model`` when :func:`fitting`. Lightning never calls ``train()`` on the whole model
during a fit, but anything that does (a callback, user code between epochs) would undo the frozen parts' eval
mode, so every task sets them again at the start of each training epoch. A fit whose only modules in eval mode
are those of frozen parts says so in one line (:func:`note_frozen_eval_modes`) in place of Lightning's warning,
which stays for any other module in eval mode.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from typing import Any

from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

log = logging.getLogger(__name__)

#: Lightning's warning at the start of training (``FitLoop._warn_if_modules_in_eval_mode``), by module count
LIGHTNING_EVAL_WARNING = "Found {} module(s) in eval mode at the start of training"
#: the warning filters :func:`note_frozen_eval_modes` added and :func:`release_eval_warning` removes
_quieted: list[Any] = []


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``module`` that hold parameters, none that trains and, inside a backbone,
    none that passes a gradient to a trained parameter (parents first)."""
    from transferkit.backbones.base import Backbone

    in_backbone: set[int] = set()
    dead: set[int] = set()
    for m in module.modules():
        if isinstance(m, Backbone):
            named = dict(m.named_parameters())
            in_backbone |= {id(p) for p in named.values()}
            dead |= {id(named[n]) for n in m.gradient_free_names()}
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        params = list(m.parameters())
        if params and all(
            not p.requires_grad and (id(p) not in in_backbone or id(p) in dead) for p in params
        ):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    for child in module.children():
        visit(child)
    return out


def apply_train_modes(module: nn.Module, keep_train: Iterable[nn.Module] = ()) -> None:
    """``module.train()``, then every frozen part in eval mode, then ``keep_train`` modules back in train
    mode (e.g. a DINO teacher's BatchNorm layers, which normalise with batch statistics)."""
    module.train()
    for part in frozen_parts(module):
        part.eval()
    for m in keep_train:
        m.train()


def fitting(module: nn.Module) -> bool:
    """Whether a Lightning ``Trainer`` is fitting ``module`` now (its ``configure_model`` runs before the
    model summary and the eval-mode check then)."""
    trainer = getattr(module, "_trainer", None)
    return trainer is not None and trainer.state.fn == TrainerFn.FITTING


def note_frozen_eval_modes(module: nn.Module, keep_train: Iterable[nn.Module] = ()) -> bool:
    """At ``on_fit_start``, modes set: when the modules in eval mode are exactly those of the frozen parts (less
    ``keep_train``), log them as intended and silence the warning of Lightning that counts them, until
    :func:`release_eval_warning` (``on_train_start``). True when it did; any other module in eval mode makes the
    count another and Lightning's warning stays."""
    in_eval = {n for n, m in module.named_modules() if not m.training}
    parts = frozen_parts(module)
    kept = {id(m) for m in keep_train}
    names = {id(m): n for n, m in module.named_modules()}
    in_parts = {id(m): names[id(m)] for part in parts for m in part.modules()}
    intended = {n for i, n in in_parts.items() if i not in kept}
    if not in_eval or in_eval != intended:
        return False
    n_kept = len(in_parts) - len(intended)
    log.info(
        "%d modules are in eval mode by design, those of the frozen part(s) %s that no gradient reaches (no "
        "dropout, no BatchNorm statistics updates); every other module%s is in train mode",
        len(in_eval),
        ", ".join(names[id(p)] for p in parts),
        f" ({n_kept} in the frozen parts, by design)" if n_kept else "",
    )
    message = re.escape(LIGHTNING_EVAL_WARNING.format(len(in_eval)))
    warnings.filterwarnings("ignore", message=message, category=PossibleUserWarning)
    _quieted.append(warnings.filters[0])
    return True


def release_eval_warning() -> None:
    """Remove the warning filters :func:`note_frozen_eval_modes` added (Lightning warns at most once a fit,
    before ``on_train_start``)."""
    while _quieted:
        entry = _quieted.pop()
        if entry in warnings.filters:  # ("ignore" filters leave nothing in the warning registries to reset)
            warnings.filters.remove(entry)
