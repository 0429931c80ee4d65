"""An offline model zoo that transferkit pretrains itself, and the ranking benchmark measured on it
(``transferkit rank zoo --config configs/rank/zoo.yaml``).

Random-init twins are not a zoo: rankers need models whose transferability differs for reasons of what they
learned. A :class:`ZooRecipe` lists

- ``members``: backbones pretrained here, each from a start (``vit-micro:random``...) with ``supervised``
  fine-tuning (``transferkit fit`` of ``ImageClassifier(adaptation=finetune)``) or ``dino`` continuation
  (``DinoContinuation``) on one offline source (``digits``, ``shapes``, ``textures``, or any source);
  each is written as a saved backbone (:mod:`transferkit.backbones.saved`) under ``<run>/members/<name>``
  and reused by later runs unless ``rebuild``;
- ``include``: backbones used as they are (the real pretrained :data:`REAL_MODELS`, ``minilm-l6`` and
  ``efficientnet-lite0/1/2``, measured at the recipe's ``image_size``; random twins);
- ``targets``: the offline datasets whose class-subset tasks are measured
  (:func:`~transferkit.select.benchmark.run_benchmark`: logistic-regression probe and every training-free
  score, rows marked with their protocol), so the table's datasets come from distinct sources, not only class
  subsets of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import UserError

log = logging.getLogger(__name__)

ZOO_METHODS = ("supervised", "dino")


@dataclass
class ZooMember:
    """One backbone the zoo pretrains.

    Args:
        name: folder name of the saved backbone (letters, digits, ``-``, ``_``, ``.``).
        start: the backbone it starts from (``vit-micro:random``, ``convnet-micro:random``, ``minilm-l6``...).
        method: ``supervised`` (fine-tune with labels) or ``dino`` (self-distillation, labels ignored).
        source: the offline source it learns from (``digits``, ``shapes``, ``textures``).
        epochs: training epochs.
        batch_size: training batch size.
        blr: base learning rate (``lr = blr * batch / 256``).
        limit_train_batches: Lightning's limit on batches per epoch (None: every batch).
        local_crop_size: DINO's local crop side (None: half the image size; at least the backbone's patch or
            stride, e.g. 32 for ``convnet-micro``).
    """

    name: str
    start: str
    method: str = "supervised"
    source: str = "digits"
    epochs: int = 3
    batch_size: int = 64
    blr: float = 1e-3
    limit_train_batches: int | float | None = None
    local_crop_size: int | None = None

    def __post_init__(self) -> None:
        if (
            not self.name
            or not all(c.isalnum() or c in "-_." for c in self.name)
            or self.name.startswith(".")
        ):
            raise UserError(f"zoo member name '{self.name}': use letters, digits, '-', '_' and '.' only")
        if self.method not in ZOO_METHODS:
            raise UserError(
                f"zoo member '{self.name}': method '{self.method}' is not one of {list(ZOO_METHODS)}"
            )
        if self.epochs < 1 or self.batch_size < 2 or not self.blr > 0:
            raise UserError(
                f"zoo member '{self.name}': epochs >= 1, batch_size >= 2 and blr > 0 are required"
            )


#: real pretrained models the default zoo includes as they are: all-MiniLM-L6-v2 (language, fed patches) and
#: EfficientNet-Lite0/1/2 (ImageNet-1k CNNs); their weights ship in pip packages, so no download is needed
REAL_MODELS = ("minilm-l6", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
#: random-init backbones the default zoo includes: the MiniLM twin and the members' starting points
RANDOM_TWINS = ("minilm-l6:random", "vit-micro:random", "convnet-micro:random")

#: the default zoo (configs/rank/zoo.yaml): two architectures x (supervised, DINO) x three offline sources
DEFAULT_MEMBERS = (
    ZooMember("vit-micro-sup-digits", "vit-micro:random", "supervised", "digits", epochs=15, blr=5e-3),
    ZooMember("vit-micro-sup-shapes", "vit-micro:random", "supervised", "shapes", epochs=15, blr=5e-3),
    ZooMember("vit-micro-dino-textures", "vit-micro:random", "dino", "textures", epochs=10),
    ZooMember(
        "convnet-micro-sup-textures", "convnet-micro:random", "supervised", "textures", epochs=15, blr=5e-3
    ),
    ZooMember(
        "convnet-micro-dino-shapes", "convnet-micro:random", "dino", "shapes", epochs=10, local_crop_size=32
    ),
    ZooMember(
        "convnet-micro-sup-digits", "convnet-micro:random", "supervised", "digits", epochs=15, blr=5e-3
    ),
)


@dataclass
class ZooRecipe:
    """What ``transferkit rank zoo`` pretrains and measures.

    Args:
        members: backbones pretrained here (:class:`ZooMember`).
        include: backbones used as they are.
        targets: offline sources whose class-subset tasks are measured.
        tasks_per_target: class-subset tasks per target.
        classes_per_task: classes per task.
        image_size: image size of pretraining and measurement.
    """

    members: list[ZooMember] = field(default_factory=lambda: list(DEFAULT_MEMBERS))
    include: list[str] = field(default_factory=lambda: [*REAL_MODELS, *RANDOM_TWINS])
    targets: list[str] = field(default_factory=lambda: ["digits", "shapes", "textures"])
    tasks_per_target: int = 4
    classes_per_task: int = 3
    image_size: int = 32

    def __post_init__(self) -> None:
        self.members = [m if isinstance(m, ZooMember) else ZooMember(**m) for m in self.members]
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise UserError(f"zoo member names must be unique, got {names}")
        if not self.members and len(self.include) < 2:
            raise UserError("a zoo needs at least 2 backbones (members or include)")
        if not self.targets:
            raise UserError("a zoo needs at least one target dataset")
        if self.tasks_per_target < 1 or self.classes_per_task < 2 or self.image_size < 8:
            raise UserError("tasks_per_target >= 1, classes_per_task >= 2 and image_size >= 8 are required")


def _fit(member: ZooMember, image_size: int, train_dir: Path, seed: int, device: str, progress: bool) -> Any:
    """``transferkit fit`` of one member into ``train_dir/<name>``; returns the LightningCLI object."""
    from transferkit.lightning_cli import run_fit

    if member.method == "supervised":
        model: dict[str, Any] = {
            "class_path": "transferkit.tasks.ImageClassifier",
            "init_args": {
                "backbone": {"name": member.start, "seed": seed},
                "adaptation": "finetune",
                "optimizer": {"name": "adamw", "blr": member.blr, "warmup_epochs": 0},
            },
        }
        data: dict[str, Any] = {
            "class_path": "transferkit.data.ImageClassificationDataModule",
            "init_args": {"source": member.source, "image_size": image_size, "batch_size": member.batch_size},
        }
    else:
        model = {
            "class_path": "transferkit.tasks.ssl_dino.DinoContinuation",
            "init_args": {
                "backbone": {"name": member.start, "seed": seed},
                "head": {"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64, "use_bn": True},
                "optimizer": {"name": "adamw", "blr": member.blr, "warmup_epochs": 0},
            },
        }
        data = {
            "class_path": "transferkit.data.unlabeled.UnlabeledImageDataModule",
            "init_args": {
                "source": member.source,
                "split": "train",
                "image_size": image_size,
                "local_crop_size": member.local_crop_size or max(8, image_size // 2),
                "num_local_crops": 2,
                "batch_size": member.batch_size,
            },
        }
    return run_fit(model, data, epochs=member.epochs, device=device, progress=progress, seed=seed, name=member.name,
                   runs_dir=train_dir, limit_train_batches=member.limit_train_batches)  # fmt: skip


def build_member(
    member: ZooMember,
    image_size: int,
    members_dir: Path,
    train_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    rebuild: bool = False,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Pretrain ``member`` (or reuse ``members_dir/<name>``) and return its saved-backbone folder and facts."""
    from transferkit.backbones import save_backbone
    from transferkit.backbones.registry import BackboneConfig
    from transferkit.backbones.saved import is_saved_backbone, read_saved_meta

    out = members_dir / member.name
    if is_saved_backbone(out) and not rebuild:
        meta = read_saved_meta(out)
        if meta.get("source", {}).get("recipe") == asdict(member) and meta.get("image_size") == image_size:
            return out, {**meta.get("source", {}), "reused": True}
        log.info("zoo member %s: the saved backbone was built from another recipe; rebuilding", member.name)
    cli = _fit(member, image_size, train_dir, seed, device, progress)
    task = cli.model
    facts: dict[str, Any] = {"recipe": asdict(member), "method": member.method, "train_run": str(cli.run_dir)}
    metrics_file = Path(cli.run_dir) / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        if isinstance(metrics.get("val"), dict) and "acc1" in metrics["val"]:
            facts["source_val_acc1"] = metrics["val"]["acc1"]
    tmp = members_dir / f".{member.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    members_dir.mkdir(parents=True, exist_ok=True)
    if member.method == "supervised":
        cfg = BackboneConfig(**asdict(task.backbone_cfg))
        save_backbone(task.backbone, cfg, tmp, image_size=image_size, source=facts)
    else:  # DINO wrote <run>/backbone; add the recipe to its provenance
        saved = Path(task.saved_backbone_dir)
        meta = read_saved_meta(saved)
        shutil.copytree(saved, tmp)
        meta_path = tmp / "transferkit_backbone.json"
        doc = json.loads(meta_path.read_text())
        doc["source"] = {**meta.get("source", {}), **facts}
        meta_path.write_text(json.dumps(doc, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out, facts


def run_zoo(
    recipe: ZooRecipe,
    run_dir: Path,
    *,
    logreg: Any = None,
    extract: Any = None,
    seed: int = 0,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Pretrain the members, then measure every backbone on every target's tasks.

    Returns the results-table rows and ``{"members": {name: facts}, "backbones": [...], "targets": {target:
    {task: {backbone: test top-1}}}}``.
    """
    from transferkit.data.spec import DataSpec
    from transferkit.probe.cache import ExtractOptions
    from transferkit.select.benchmark import run_benchmark
    from transferkit.utils.devices import default_device

    extract = extract or ExtractOptions()
    device = extract.device or default_device()
    members: dict[str, Any] = {}
    backbones = list(recipe.include)
    for m in recipe.members:
        if progress is not None:
            progress(f"pretraining {m.name} ({m.method} on {m.source})")
        path, facts = build_member(
            m, recipe.image_size, run_dir / "members", run_dir / "train", seed=seed, device=str(device),
            rebuild=rebuild,
        )  # fmt: skip
        members[m.name] = {"path": str(path), **facts}
        backbones.append(str(path))
    if len(set(backbones)) != len(backbones):
        raise UserError(f"a backbone appears twice in the zoo: {backbones}")
    rows: list[Any] = []
    targets: dict[str, Any] = {}
    for t in recipe.targets:
        spec = DataSpec({"source": t, "image_size": recipe.image_size})
        t_rows, accs = run_benchmark(
            spec,
            backbones,
            tasks=recipe.tasks_per_target,
            classes_per_task=recipe.classes_per_task,
            logreg=logreg,
            extract=extract,
            seed=seed,
            run=run_dir.name,
            on_backbone=(lambda n, t=t: progress(f"{t}: {Path(n).name} measured")) if progress else None,
        )
        rows += t_rows
        targets[t] = accs
    return rows, {"members": members, "backbones": backbones, "targets": targets}
