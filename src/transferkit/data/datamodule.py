"""Lightning DataModule for image classification over any :mod:`transferkit.data.sources` source.

Batches are ``(images, labels)``: ``images`` ``(B, 3, image_size, image_size)`` float32 in ``[0, 1]``
(backbones normalise themselves), ``labels`` ``(B,)`` int64 indices into ``class_names``.

Training order is a pure function of ``(seed, epoch)``: the train loader uses torch's
:class:`~torch.utils.data.DistributedSampler` (with one replica on a single device) seeded with ``seed``.
Lightning's fit loop calls ``sampler.set_epoch(epoch)`` at the start of every epoch (lightning 2.6:
``fit_loop.on_advance_start`` -> ``_set_sampler_epoch``, also after restoring a checkpoint), so a run
resumed at an epoch boundary sees exactly the batches an uninterrupted run sees. Under DDP the sampler
is built with the trainer's ``world_size``/``global_rank``; because it already is a ``DistributedSampler``,
Lightning leaves it in place instead of injecting its own.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from transferkit.data.options import DEFAULT_RANDAUG, DataOptions
from transferkit.data.sources import (
    SPLITS,
    ClassificationDataset,
    ImageFileDataset,
    build_source,
    collate_drop_none,
    scan_images,
)
from transferkit.data.transforms import build_transform, describe_transform
from transferkit.errors import UserError

FINGERPRINT_VERSION = 1


def shuffling_sampler(dataset: Dataset, trainer: L.Trainer | None, seed: int) -> DistributedSampler:
    """Shuffling sampler whose order depends only on ``(seed, epoch)`` (``set_epoch`` selects the epoch).

    One replica on a single device (or without a trainer); the trainer's world size and rank under DDP.
    """
    world_size = int(getattr(trainer, "world_size", 1) or 1)
    rank = int(getattr(trainer, "global_rank", 0) or 0)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


class IndexedImages(Dataset):
    """Items ``{"image", "index"}`` of a classification dataset (``None`` where an image was skipped as
    unreadable), so predictions name their images even when a batch lost one.

    Args:
        images: the images (their ``paths`` name the files, where they come from files).
        labeled: whether ``images.targets`` are true labels (the test split) or placeholders (a folder).
    """

    def __init__(self, images: ClassificationDataset, labeled: bool) -> None:
        self.images = images
        self.labeled = labeled

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.images[index]
        return None if item is None else {"image": item[0], "index": index}


class ImageClassificationDataModule(L.LightningDataModule):
    """Image-classification data: train/val/test splits of one source, transforms and loaders.

    ``num_classes`` and ``class_names`` are available right after construction (read from folder names,
    CSV labels or the source's fixed class list; no image is opened), so a CLI can link
    ``data.num_classes`` to the model.
    """

    def __init__(
        self,
        source: str = "digits",
        path: str | None = None,
        image_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        augment: str = "none",
        randaug: str = DEFAULT_RANDAUG,
        hflip: float | None = None,
        crop_pct: float = 1.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        val_fraction: float | None = None,
        on_corrupt: str = "error",
        download: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        predict_path: str | None = None,
    ) -> None:
        # the docstring is DataOptions' (set below the class)
        super().__init__()
        self.save_hyperparameters()
        options = DataOptions(**{k: self.hparams[k] for k in DataOptions.__dataclass_fields__})
        options.check()
        num_workers, hflip = options.resolved_num_workers(), options.resolved_hflip()

        self.source_name = source
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.augment = augment
        self.hflip = float(hflip)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.predict_path = predict_path
        self.on_corrupt = on_corrupt
        common = dict(randaug=randaug, hflip=self.hflip, crop_pct=crop_pct, scale=tuple(crop_scale))
        self.train_transform = build_transform(self.image_size, train=True, augment=augment, **common)
        self.eval_transform = build_transform(self.image_size, train=False, **common)
        self.data_source = build_source(
            source,
            path,
            image_size=self.image_size,
            val_fraction=val_fraction,
            on_corrupt=on_corrupt,
            download=download,
        )
        self._datasets: dict[tuple[str, bool], ClassificationDataset] = {}
        self._fingerprints: dict[str, str] = {}
        self._predict: dict[str, IndexedImages] = {}

    # ------------------------------------------------------------------ classes
    @property
    def class_names(self) -> list[str]:
        return list(self.data_source.class_names)

    @property
    def num_classes(self) -> int:
        return self.data_source.num_classes

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.data_source.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.data_source.splits()  # load/scan now, so data errors surface before the first step
        if stage == "predict":
            self.predict_dataset()

    def dataset(self, split: str, train_transform: bool = False) -> ClassificationDataset:
        """The ``split`` dataset with the train (augmenting) or eval transform; items are
        ``(image (3, S, S) float32 in [0, 1], label)`` with ``S = image_size``."""
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; choose one of {list(SPLITS)}")
        key = (split, bool(train_transform))
        if key not in self._datasets:
            transform = self.train_transform if train_transform else self.eval_transform
            self._datasets[key] = self.data_source.splits()[split].with_transform(transform)
        return self._datasets[key]

    def train_sampler(self, dataset: ClassificationDataset) -> DistributedSampler:
        """:func:`shuffling_sampler` over ``dataset`` for this datamodule's trainer and seed."""
        return shuffling_sampler(dataset, getattr(self, "trainer", None), self.seed)

    def _loader(self, dataset: ClassificationDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_drop_none,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train", train_transform=True)
        return self._loader(ds, self.batch_size, sampler=self.train_sampler(ds), drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataset(self) -> IndexedImages:
        """What ``predict`` classifies, in order, with the eval transform: ``predict_path``'s images, else the
        test split."""
        if "predict" not in self._predict:
            if self.predict_path is not None:
                files = scan_images(self.predict_path)
                images = ImageFileDataset(
                    [(f, 0) for f in files],
                    ["unlabeled"],
                    self.eval_transform,
                    self.on_corrupt,
                    self.predict_path,
                )
                self._predict["predict"] = IndexedImages(images, labeled=False)
            else:
                self._predict["predict"] = IndexedImages(self.dataset("test"), labeled=True)
        return self._predict["predict"]

    def predict_dataloader(self) -> DataLoader:
        """Batches ``{"image": (B, 3, S, S), "index": (B,)}`` of :meth:`predict_dataset` (an unreadable image
        skipped with ``on_corrupt: skip`` is missing from its batch; ``index`` says which images are there)."""
        return self._loader(self.predict_dataset(), self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ identity and reports
    def fingerprint(self, split: str) -> str:
        """Stable hex hash of the ``split``'s eval images: source, resolved path, image identities (file
        paths, sizes, mtimes and labels, or the in-memory arrays' hash), image size and eval transform.

        Equal whenever the eval inputs are equal (also across processes and runs); it changes when a file,
        a label, the split membership, ``image_size`` or the eval transform changes. Keys feature caches.
        """
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; choose one of {list(SPLITS)}")
        if split in self._fingerprints:  # computed once per datamodule (it stats every image file)
            return self._fingerprints[split]
        ds = self.data_source.splits()[split]
        payload = {
            "version": FINGERPRINT_VERSION,
            "source": self.source_name,
            "path": None if self.data_source.path is None else str(self.data_source.path),
            "image_size": self.image_size,
            "eval_transform": describe_transform(self.eval_transform),
            "class_names": self.class_names,
            "content": ds.content_digest(),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        self._fingerprints[split] = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return self._fingerprints[split]

    def describe(self) -> dict[str, Any]:
        """Source, image size, classes and per-split counts (total and per class), for reports."""
        splits = self.data_source.splits()
        return {
            "source": self.source_name,
            "path": None if self.data_source.path is None else str(self.data_source.path),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "test_is_val": splits["test"] is splits["val"],
            "splits": {
                split: {
                    "count": len(ds),
                    "per_class": dict(zip(self.class_names, ds.class_counts())),
                }
                for split, ds in splits.items()
            },
        }


#: one description of the options, shared with the torch-free parsers of the other commands
ImageClassificationDataModule.__init__.__doc__ = DataOptions.__doc__
