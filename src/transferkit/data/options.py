"""The options of the image-classification datamodule, in a module that imports neither torch nor lightning.

:class:`DataOptions` is what ``--data.*`` means on every command that is not a LightningCLI one (``compare``,
``extract``, ``rank``...): their parsers are built from it, so ``--help`` and argument errors come back before
torch loads. :class:`~transferkit.data.datamodule.ImageClassificationDataModule` takes the same arguments
(LightningCLI reads its ``__init__``), shares this docstring and runs :meth:`DataOptions.check`; a test keeps
the two signatures equal (names, types, defaults).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from transferkit.errors import UserError

SPLITS = ("train", "val", "test")
SOURCES = ("digits", "shapes", "textures", "imagefolder", "csv", "cifar10", "cifar100")
#: built-in sources held in memory, no path
BUILTIN_SOURCES = ("digits", "shapes", "textures")
#: what an unreadable image does
ON_CORRUPT = ("error", "skip")
#: training augmentation presets (:func:`transferkit.data.transforms.build_transform`)
AUGMENTS = ("none", "basic", "randaug")
#: timm's RandAugment recipe of DeiT / MAE fine-tuning
DEFAULT_RANDAUG = "rand-m9-mstd0.5-inc1"
#: sources whose images are decoded from files (worth DataLoader workers)
FILE_SOURCES = ("imagefolder", "csv")


@dataclass
class DataOptions:
    """
    Args:
        source: Where the images come from: ``digits`` (built-in sklearn handwritten digits, offline), ``shapes`` or ``textures`` (generated, offline),
            ``imagefolder`` (``path/{train,val[,test]}/<class>/<image>``), ``csv`` (a
            ``path,label[,split]`` file), ``cifar10`` or ``cifar100``
            (torchvision's on-disk format under ``path``).
        path: Dataset folder, CSV file or CIFAR folder; unused for ``digits``.
        image_size: Side length in pixels of the square images fed to the model.
        batch_size: Training batch size (per device).
        eval_batch_size: Validation/test/predict batch size; defaults to ``batch_size``.
        num_workers: DataLoader worker processes (0 = load in the main process); None: images read from
            files (``imagefolder``, ``csv``) decode in ``min(4, cpus - 1)`` workers, in-memory sources
            (``digits``, CIFAR) load in the main process.
        augment: Training augmentation: ``none``, ``basic`` (random resized crop + flip) or ``randaug``
            (timm RandAugment recipe). Evaluation never augments.
        randaug: timm RandAugment config string for ``augment=randaug``.
        hflip: Horizontal-flip probability for ``basic``/``randaug``; default 0.5, except 0 for ``digits``
            (a mirrored digit is not the same digit).
        crop_pct: Evaluation center-crop fraction (resize the shorter side to ``image_size / crop_pct``,
            then crop ``image_size``); 1.0 keeps the whole image, 0.875 is the ImageNet convention.
        crop_scale: Area range ``(min, max)`` of the random resized crop for ``basic``/``randaug``.
        val_fraction: Fraction of train held out as validation (stratified, fixed seed) when the source
            has no validation split (``imagefolder`` without ``val/``, CSV without ``val`` rows);
            CIFAR defaults to 0.1.
        on_corrupt: What an unreadable image does: ``error`` (stop, naming the file) or ``skip`` (drop it
            from its batch with a warning).
        download: Download CIFAR into ``path`` if missing (needs internet).
        seed: Seed of the training order; the order of epoch ``e`` depends only on ``(seed, e)``.
        drop_last: Drop the last incomplete training batch.
        pin_memory: Pin host memory for faster GPU transfer; default: when CUDA is available.
        persistent_workers: Keep loader workers alive between epochs (only with ``num_workers > 0``).
        predict_path: A folder of images (any depth, labels ignored) that ``transferkit predict``
            classifies; None: the test split.
    """

    source: str = "digits"
    path: str | None = None
    image_size: int = 64
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int | None = None
    augment: str = "none"
    randaug: str = DEFAULT_RANDAUG
    hflip: float | None = None
    crop_pct: float = 1.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    val_fraction: float | None = None
    on_corrupt: str = "error"
    download: bool = False
    seed: int = 0
    drop_last: bool = False
    pin_memory: bool | None = None
    persistent_workers: bool = True
    predict_path: str | None = None

    def check(self) -> None:
        """Raise a one-line :class:`UserError` for a value no datamodule can take (before any data is read)."""
        if self.source not in SOURCES:
            raise UserError(f"unknown data.source '{self.source}'; choose one of {list(SOURCES)}")
        if self.augment not in AUGMENTS:
            raise UserError(f"unknown data.augment '{self.augment}'; choose one of {list(AUGMENTS)}")
        if self.on_corrupt not in ON_CORRUPT:
            raise UserError(f"data.on_corrupt must be one of {list(ON_CORRUPT)}, got '{self.on_corrupt}'")
        for name, value in (("image_size", self.image_size), ("batch_size", self.batch_size)):
            if int(value) < 1:
                raise UserError(f"data.{name} must be >= 1, got {value}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise UserError(f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def resolved_num_workers(self) -> int:
        """``num_workers``, or its default: ``min(4, cpus - 1)`` for file sources, 0 for in-memory ones."""
        if self.num_workers is not None:
            return int(self.num_workers)
        return max(0, min(4, (os.cpu_count() or 1) - 1)) if self.source in FILE_SOURCES else 0

    def resolved_hflip(self) -> float:
        """``hflip``, or its default: 0 for ``digits``, 0.5 otherwise."""
        if self.hflip is not None:
            return float(self.hflip)
        return 0.0 if self.source == "digits" else 0.5
