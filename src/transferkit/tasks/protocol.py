"""The contract between a task module and the rest of transferkit (the CLI, export, reports).

Every task (``ImageClassifier``, ``DetectionTask``, ``GroundingVLMTask``, ``DinoContinuation``) is a
``LightningModule`` that also implements :class:`Task`; the CLI checks it once (:func:`check_task`) and then
uses the members directly. What the datamodule knows (classes, image size, vocabularies, crop sizes) reaches a
task through ``LightningCLI.link_arguments`` into its init arguments (see :data:`DATA_LINKS`), never by the
task reaching into the datamodule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from transferkit.errors import UserError

if TYPE_CHECKING:
    from transferkit.backbones.base import Backbone

#: datamodule attribute -> task init argument, linked on instantiation (a task without the argument skips it)
DATA_LINKS: tuple[tuple[str, str], ...] = (
    ("num_classes", "num_classes"),
    ("class_names", "class_names"),
    ("image_size", "image_size"),
    ("desc_vocab", "desc_vocab"),
    ("crop_sizes", "crop_sizes"),
    ("label_from", "label_from"),
)


@runtime_checkable
class Task(Protocol):
    """What the CLI and export use of a task.

    Attributes:
        checkpoint_monitor: ``(metric, mode)`` that chooses ``best.ckpt`` (e.g. ``("val/acc1", "max")``).
        final_metrics: ``{split: {metric: value}}`` of the last evaluation, written to ``metrics.json``.
        export_task: what an exported artifact of the task does (``classification``, ``detection``), or None
            when the task cannot be exported.
    """

    checkpoint_monitor: tuple[str, str]
    final_metrics: dict[str, dict[str, Any]]
    export_task: str | None

    def describe(self) -> dict[str, Any]:
        """Facts of the run (backbone, adaptation, optimiser...) for ``metrics.json``."""
        ...

    def dry_run_step(self, batch: Any) -> dict[str, Any]:
        """``--validate_only``: one forward pass on one training batch (no update), summarised."""
        ...

    def image_backbone(self) -> Backbone | None:
        """The image backbone (built: after ``configure_model``), or None for a task without one (a VLM)."""
        ...


def check_task(module: Any) -> Task:
    """``module`` if it implements :class:`Task`; a one-line error naming what is missing otherwise."""
    if isinstance(module, Task):
        return module
    missing = [m for m in ("checkpoint_monitor", "final_metrics", "export_task", "describe", "dry_run_step",
                           "image_backbone") if not hasattr(module, m)]  # fmt: skip
    raise UserError(
        f"model.class_path {type(module).__module__}.{type(module).__qualname__} is not a transferkit task "
        f"(missing {', '.join(missing)}); use one of transferkit.tasks"
    )
