"""Train and eval modes during training, decided in one place.

``from_pretrained`` returns models in eval mode and Lightning (2.x) keeps whatever mode each module is in, so
a task that does nothing trains a Hugging Face backbone with its dropout off. :func:`apply_train_modes` puts
everything in train mode and then every *frozen part* in eval mode, so frozen features see no dropout and
update no BatchNorm statistics. A frozen part is a submodule with parameters, none of which trains, that no
gradient passes through: a linear probe's backbone, a DINO teacher, a frozen vision tower before a trained
LLM, the first N blocks of a ViT. Frozen layers between trained ones are not frozen parts and keep train
mode, as in peft's LoRA fine-tuning: the blocks of a LoRA-adapted backbone, or the frozen blocks of a
language model whose new PatchEmbed trains through them (:meth:`Backbone.gradient_free_names
<transferkit.backbones.base.Backbone.gradient_free_names>`). Every task calls it at the start of each
training epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


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
