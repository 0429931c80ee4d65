"""Unlabeled images with DINO's multi-crop augmentation, for self-supervised continuation.

Batches are ``(crops, _)``: ``crops`` a list of ``2 + num_local_crops`` tensors, the two global crops
``(B, 3, image_size, image_size)`` first, then the local crops ``(B, 3, local_crop_size, local_crop_size)``,
float32 in ``[0, 1]`` (backbones normalise themselves); ``_`` is a placeholder ``(B,)`` tensor (labels are
never read).

Sources (``source``):

- ``folder``: every image file under ``path``, at any depth (class subfolders, if any, are ignored);
- ``digits`` (offline default): sklearn's handwritten digits of the fixed ``split`` (default ``train``, so a
  later probe evaluated on val/test never saw its test images during self-supervision), labels ignored;
- ``imagefolder`` / ``csv`` / ``cifar10`` / ``cifar100``: the labeled sources of
  :mod:`transferkit.data.sources`, one split, labels ignored.

The multi-crop transform follows DINO's ``DataAugmentationDINO`` (facebookresearch/dino, main_dino.py), built
from torchvision ``transforms.v2`` ops: global crops ``RandomResizedCrop(scale=global_crops_scale)`` + flip +
colour jitter (p 0.8) + grayscale (p 0.2) + Gaussian blur (p 1.0 for the first, 0.1 for the second) +
solarisation (p 0.2, second only); local crops ``RandomResizedCrop(local_crop_size, local_crops_scale)`` + flip
+ jitter + grayscale + blur (p 0.5). The blur kernel and sigma range scale with the crop size (DINO's
0.1-2.0 px sigma is for 224 px crops).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from transferkit.data.datamodule import shuffling_sampler
from transferkit.data.options import BUILTIN_SOURCES, ON_CORRUPT, SOURCES
from transferkit.data.sources import (
    ClassificationDataset,
    ImageFileDataset,
    build_source,
    collate_drop_none,
    scan_images,
)
from transferkit.errors import DatasetError, UserError

log = logging.getLogger(__name__)

UNLABELED_SOURCES = ("folder", *SOURCES)


def _blur(size: int, p: float) -> v2.Transform:
    """Gaussian blur with DINO's sigma range (0.1-2.0 px at 224 px) scaled to ``size``, applied with prob p."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    high = max(0.2, 2.0 * size / 224)
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma=(min(0.1, high / 2), high))], p=p)


class MultiCropTransform:
    """PIL image -> list of ``2 + num_local_crops`` float tensors in [0, 1] (DINO's ``DataAugmentationDINO``)."""

    def __init__(
        self,
        image_size: int,
        num_local_crops: int = 6,
        local_crop_size: int | None = None,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        hflip: float = 0.5,
        color_jitter: float = 0.8,
    ) -> None:
        for name, scale in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise UserError(
                    f"data.{name} must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}"
                )
        if num_local_crops < 0:
            raise UserError(f"data.num_local_crops must be >= 0, got {num_local_crops}")
        if not 0.0 <= hflip <= 1.0 or not 0.0 <= color_jitter <= 1.0:
            raise UserError("data.hflip and color_jitter are probabilities in [0, 1]")
        self.image_size = int(image_size)
        self.local_crop_size = int(local_crop_size or max(8, image_size // 2))
        self.num_local_crops = int(num_local_crops)
        bicubic = InterpolationMode.BICUBIC

        def flip_and_jitter() -> list[v2.Transform]:
            return [
                v2.RandomHorizontalFlip(p=hflip),
                v2.RandomApply(
                    [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=color_jitter
                ),
                v2.RandomGrayscale(p=0.2),
            ]

        def finish() -> list[v2.Transform]:
            return [v2.ToDtype(torch.float32, scale=True)]

        size, local = self.image_size, self.local_crop_size
        self.global1 = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(
                    size, scale=tuple(global_crops_scale), interpolation=bicubic, antialias=True
                ),
                *flip_and_jitter(),
                _blur(size, 1.0),
                *finish(),
            ]
        )
        self.global2 = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(
                    size, scale=tuple(global_crops_scale), interpolation=bicubic, antialias=True
                ),
                *flip_and_jitter(),
                _blur(size, 0.1),
                v2.RandomSolarize(threshold=128, p=0.2),
                *finish(),
            ]
        )
        self.local = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(
                    local, scale=tuple(local_crops_scale), interpolation=bicubic, antialias=True
                ),
                *flip_and_jitter(),
                _blur(local, 0.5),
                *finish(),
            ]
        )

    def __call__(self, image: Any) -> list[torch.Tensor]:
        crops = [self.global1(image), self.global2(image)]
        crops += [self.local(image) for _ in range(self.num_local_crops)]
        return crops

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform(global 2x{self.image_size}px, local {self.num_local_crops}x"
            f"{self.local_crop_size}px)"
        )


class UnlabeledImageDataModule(L.LightningDataModule):
    """Unlabeled images for self-supervised training (see the module docstring for batches and sources).

    There is no validation or test split: self-supervised runs are judged afterwards by probes
    (``transferkit compare`` or a linear probe on the saved backbone).
    """

    def __init__(
        self,
        source: str = "digits",
        path: str | None = None,
        split: str = "train",
        image_size: int = 64,
        num_local_crops: int = 6,
        local_crop_size: int | None = None,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        hflip: float | None = None,
        color_jitter: float = 0.8,
        batch_size: int = 64,
        num_workers: int = 0,
        on_corrupt: str = "error",
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        """
        Args:
            source: ``folder`` (every image under ``path``, labels ignored), ``digits``, ``shapes``, ``textures`` (built in, offline),
                or a labeled source (``imagefolder``, ``csv``, ``cifar10``, ``cifar100``) whose labels are
                ignored.
            path: Image folder, dataset folder, CSV file or CIFAR folder; unused for ``digits``.
            split: Split of a labeled source to use (``train``, ``val`` or ``test``); unused for ``folder``.
            image_size: Side length of the two global crops (the size the backbone is used at).
            num_local_crops: Number of small local crops per image (DINO: 6 to 10; 0 = global crops only).
            local_crop_size: Side length of the local crops; default ``image_size // 2`` (DINO: 96 for 224).
                Language-model backbones need a multiple of their patch size.
            global_crops_scale: Area range of the global random resized crops (DINO: 0.4-1.0 with local
                crops, 0.14-1.0 without).
            local_crops_scale: Area range of the local crops (DINO: 0.05-0.4).
            hflip: Horizontal-flip probability; default 0.5, except 0 for ``digits`` (a mirrored digit is
                another symbol).
            color_jitter: Probability of DINO's colour jitter (brightness/contrast 0.4, saturation 0.2,
                hue 0.1).
            batch_size: Images per batch (per device); each image yields ``2 + num_local_crops`` crops.
            num_workers: DataLoader worker processes.
            on_corrupt: Unreadable image files: ``error`` (stop, naming the file) or ``skip``.
            seed: Seed of the training order; the order of epoch ``e`` depends only on ``(seed, e)``.
            drop_last: Drop the last incomplete batch (DINO does; batch statistics feed the centering).
            pin_memory: Pin host memory; default: when CUDA is available.
            persistent_workers: Keep loader workers alive between epochs (only with ``num_workers > 0``).
        """
        super().__init__()
        self.save_hyperparameters()
        if source not in UNLABELED_SOURCES:
            raise UserError(f"unknown unlabeled source '{source}'; choose one of {list(UNLABELED_SOURCES)}")
        if split not in ("train", "val", "test"):
            raise UserError(f"unknown split '{split}'; choose train, val or test")
        if on_corrupt not in ON_CORRUPT:
            raise UserError(f"data.on_corrupt must be one of {list(ON_CORRUPT)}, got '{on_corrupt}'")
        if int(image_size) < 8 or int(batch_size) < 1:
            raise UserError(
                f"data.image_size must be >= 8 and batch_size >= 1, got {image_size}, {batch_size}"
            )
        if source == "folder" and path is None:
            raise UserError("source folder needs data.path: a folder of images (any depth, labels ignored)")
        self.source_name = source
        self.path = path
        self.split = split
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.on_corrupt = on_corrupt
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        if hflip is None:
            hflip = 0.0 if source == "digits" else 0.5
        self.transform = MultiCropTransform(
            self.image_size,
            num_local_crops=num_local_crops,
            local_crop_size=local_crop_size,
            global_crops_scale=tuple(global_crops_scale),
            local_crops_scale=tuple(local_crops_scale),
            hflip=hflip,
            color_jitter=color_jitter,
        )
        self.num_local_crops = self.transform.num_local_crops
        self.local_crop_size = self.transform.local_crop_size
        self._dataset: ClassificationDataset | None = None

    @property
    def crop_sizes(self) -> list[int]:
        """Side length of every crop of a batch, in batch order (2 global, then the local ones)."""
        return [self.image_size] * 2 + [self.local_crop_size] * self.num_local_crops

    def prepare_data(self) -> None:
        if self.source_name not in ("folder", *BUILTIN_SOURCES):
            self._labeled_source().prepare()

    def _labeled_source(self) -> Any:
        return build_source(
            self.source_name, self.path, image_size=self.image_size, on_corrupt=self.on_corrupt
        )

    def images(self) -> ClassificationDataset:
        """The unlabeled images without transform (labels, where the source has them, are ignored)."""
        if self._dataset is None:
            if self.source_name == "folder":
                files = scan_images(self.path)
                ds: ClassificationDataset = ImageFileDataset(
                    [(f, 0) for f in files],
                    ["unlabeled"],
                    on_corrupt=self.on_corrupt,
                    check_hint=str(self.path),
                )
            else:
                ds = self._labeled_source().splits()[self.split]
            if len(ds) < self.batch_size and self.drop_last:
                raise DatasetError(
                    f"{len(ds)} images are fewer than one batch of {self.batch_size} (drop_last=true); lower "
                    "data.batch_size or add images"
                )
            self._dataset = ds
        return self._dataset

    def setup(self, stage: str | None = None) -> None:
        self.images()  # scan/load now, so data errors surface before the first step

    def train_dataloader(self) -> DataLoader:
        ds = self.images().with_transform(self.transform)
        sampler = shuffling_sampler(ds, getattr(self, "trainer", None), self.seed)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_drop_none,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def steps_per_epoch(self) -> int:
        n = len(self.images())
        return max(1, n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size))

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source_name,
            "path": self.path,
            "split": None if self.source_name == "folder" else self.split,
            "images": len(self.images()),
            "image_size": self.image_size,
            "crops": f"2x{self.image_size}px + {self.num_local_crops}x{self.local_crop_size}px",
            "transform": repr(self.transform),
        }
