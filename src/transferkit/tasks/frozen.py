"""Checkpoints without frozen weights.

A linear probe of MiniLM trains 3.9K parameters next to 22.7M frozen ones; storing the frozen ones in every
checkpoint makes two 91 MB files per run. A task with :class:`FrozenWeightsCheckpoint` stores only what trains
(plus buffers) and, for the frozen parameters, their names, a digest and where they come from; on load they are
taken from the freshly built model (the pretrained weights, the seeded random parts: ``BackboneConfig.seed``),
and the digest proves they are the ones the run was trained with. ``save_frozen_weights: true`` keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transferkit.errors import UserError
from transferkit.utils.digest import tensors_digest

#: the checkpoint key describing omitted weights
FROZEN_KEY = "frozen_weights"


def omit_frozen_weights(checkpoint: dict[str, Any], names: Iterable[str], source: str) -> list[str]:
    """Delete ``names`` from ``checkpoint["state_dict"]``, recording them, their digest and ``source`` (how
    they are rebuilt) under :data:`FROZEN_KEY`; returns the names omitted."""
    state = checkpoint["state_dict"]
    omitted = sorted(n for n in set(names) if n in state)
    if omitted:
        digest = tensors_digest([(n, state[n]) for n in omitted])
        checkpoint[FROZEN_KEY] = {"omitted": omitted, "digest": digest, "source": source}
        for n in omitted:
            del state[n]
    return omitted


def restore_frozen_weights(state: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """Put the omitted weights back into ``checkpoint["state_dict"]`` from ``state`` (the rebuilt model's
    ``state_dict()``), after checking that they are the weights the checkpoint was trained with."""
    info = checkpoint.get(FROZEN_KEY)
    if not info:
        return
    omitted = list(info["omitted"])
    missing = [k for k in omitted if k not in state]
    if missing:
        raise UserError(
            f"the checkpoint was saved without frozen weights this model does not have ({missing[:3]}...); "
            f"build it as the run did ({info['source']})"
        )
    if tensors_digest([(k, state[k]) for k in omitted]) != info["digest"]:
        raise UserError(
            f"the checkpoint stores no frozen weights: they are rebuilt from {info['source']}, but the rebuilt "
            "weights differ from those the run was trained with (the pretrained files changed since); restore "
            "them, or train again"
        )
    checkpoint["state_dict"].update({k: state[k] for k in omitted})


class FrozenWeightsCheckpoint:
    """Mixin of a LightningModule with a ``save_frozen_weights`` hyper-parameter (module docstring).

    Subclasses say which parameters are frozen and where they come from; the default: the frozen parameters
    of the task's ``image_backbone()`` (attribute ``backbone``), rebuilt from ``model.backbone``.
    """

    def frozen_weight_names(self) -> list[str]:
        """State-dict names of the frozen parameters a checkpoint may omit."""
        return [f"backbone.{n}" for n, p in self.backbone.named_parameters() if not p.requires_grad]

    def frozen_weight_source(self) -> str:
        """How the frozen weights are rebuilt (said in the checkpoint and in errors)."""
        c = self.backbone_cfg
        return f"model.backbone (name {c.name}, pretrained {c.pretrained}, seed {c.seed})"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.hparams.save_frozen_weights:
            omit_frozen_weights(checkpoint, self.frozen_weight_names(), self.frozen_weight_source())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen_weights(self.state_dict(), checkpoint)
