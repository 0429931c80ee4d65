"""Detection data: grounding JSONL or COCO splits (or the built-in shapes set), box-aware transforms, loaders.

Batches are ``(images, targets)``:

- ``images``: ``(B, 3, S, S)`` float32 in ``[0, 1]`` (``S = image_size``; every image is resized to a square,
  boxes with it; backbones normalise themselves);
- ``targets``: a list of B dicts: ``boxes`` ``(n, 4)`` float32 **normalised cxcywh** of the resized image (the
  same numbers for the original image, since normalisation is relative), ``labels`` ``(n,)`` int64 indices
  into ``class_names``, ``desc`` ``(n,)`` int64 indices into ``desc_vocab`` (``-100`` for a description
  not seen in training), ``orig_size`` ``(2,)`` int64 ``(H, W)`` of the original image, ``index`` (int, in
  the split) and ``image`` (str, the image path).

Files hold absolute pixel boxes of the original images; transforms are torchvision ``transforms.v2`` on
``tv_tensors.BoundingBoxes``, so flips, affine jitter and the resize move the boxes with the pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferkit.data.datamodule import shuffling_sampler
from transferkit.data.detection.coco import read_coco
from transferkit.data.detection.shapes import ShapesConfig, ensure_shapes
from transferkit.data.grounding import (
    GroundingRecord,
    RecordError,
    boxes_to_model,
    check_records,
    read_grounding_jsonl,
    report_record_problems,
)
from transferkit.data.sources import load_rgb, scan_images
from transferkit.errors import DatasetError, UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DETECTION_SOURCES = ("auto", "grounding", "coco", "shapes")
LABEL_FROM = ("category", "desc", "object")
IGNORE_DESC = -100


def read_annotations(
    path: str | os.PathLike, root: str | os.PathLike | None = None, *, strict: bool = False
) -> tuple[list[GroundingRecord], list[RecordError]]:
    """Read ``.jsonl`` (grounding) or ``.json`` (COCO) annotations as grounding records, checked against their
    images under ``root`` (default: the file's folder; :func:`~transferkit.data.grounding.check_records`,
    which opens each image's header: about 50 us an image): malformed records, paths leaving ``root``, missing
    or non-image files are skipped, boxes outside their image clamped, and each kind is logged once with the
    first few listed; ``strict`` fails at the first skip.
    Returns the records kept and the errors of those skipped."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records, errors = read_grounding_jsonl(path, strict=strict)
    elif path.suffix == ".json":
        records, errors, _ = read_coco(path, strict=strict)
    else:
        raise UserError(f"'{path}': annotation files are .jsonl (grounding) or .json (COCO)")
    check = check_records(
        records, root if root is not None else path.parent, str(path), open_images=True, strict=strict
    )
    report_record_problems(path, check, errors)
    return check.records, [*errors, *check.skipped]


def object_label(obj: Any, label_from: str) -> str:
    """The class name of a grounding object: ``category`` (its ``category`` key, else ``desc`` up to the first
    ``/``), ``desc`` (the whole description) or ``object`` (one class for everything)."""
    if label_from == "desc":
        return obj.desc
    if label_from == "object":
        return "object"
    return obj.category


def object_indices(
    objects: Sequence[Any], class_index: dict[str, int], desc_index: dict[str, int], label_from: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per object, int64 ``(N,)`` each: its class index (-1 when the class is unknown) and its description
    index (``IGNORE_DESC`` when the description is outside the vocabulary)."""
    labels = torch.tensor(
        [class_index.get(object_label(o, label_from), -1) for o in objects], dtype=torch.int64
    )
    desc = torch.tensor([desc_index.get(o.desc, IGNORE_DESC) for o in objects], dtype=torch.int64)
    return labels, desc


def _labels_and_desc(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return sample["labels"], sample["desc"]


def build_detection_transform(image_size: int, train: bool = False, augment: str = "none") -> v2.Compose:
    """``{"image": PIL, "boxes": BoundingBoxes(XYXY), "labels", "desc"}`` -> the same dict with the image
    ``(3, S, S)`` float32 in ``[0, 1]`` and boxes moved along.

    ``augment`` (training only): ``none``; ``hflip`` (horizontal flip, p=0.5); ``basic`` (flip + random
    affine: translate 10%, scale 0.8-1.2). Boxes pushed out of the image are clamped, and ones left
    smaller than a pixel dropped with their labels (``SanitizeBoundingBoxes``); evaluation never drops a box.
    """
    ops: list[Any] = [v2.ToImage()]
    if train and augment in ("hflip", "basic"):
        ops.append(v2.RandomHorizontalFlip(0.5))
    if train and augment == "basic":
        ops.append(v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.2)))
    ops += [v2.Resize((image_size, image_size), antialias=True), v2.ClampBoundingBoxes()]
    if train and augment != "none":
        ops.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_desc))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


class DetectionDataset(Dataset):
    """Grounding records as ``(image (3, S, S) float32 in [0, 1], target dict)`` items (module docstring).

    ``cache=True`` keeps each item after its first load when the transform is deterministic (no random op),
    so later epochs neither decode nor resize; ignored for augmenting transforms.
    """

    def __init__(
        self,
        records: Sequence[GroundingRecord],
        root: Path,
        class_index: dict[str, int],
        desc_index: dict[str, int],
        transform: v2.Compose,
        label_from: str = "category",
        cache: bool = False,
    ) -> None:
        self.records = list(records)
        self.root = Path(root)
        self.class_index = class_index
        self.desc_index = desc_index
        self.transform = transform
        self.label_from = label_from
        deterministic = not any(
            "Random" in type(t).__name__ for t in getattr(transform, "transforms", [transform])
        )
        self.cache: dict[int, tuple[torch.Tensor, dict[str, Any]]] | None = (
            {} if cache and deterministic else None
        )

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        p = Path(self.records[index].image)
        return p if p.is_absolute() else self.root / p

    def load(self, index: int) -> Image.Image:
        path = self.image_path(index)
        try:
            return load_rgb(path)
        except (OSError, ValueError) as e:
            rec = self.records[index]
            where = f" (line {rec.line})" if rec.line else ""
            raise DatasetError(f"cannot read image '{path}'{where}: {e}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.cache is not None and index in self.cache:
            image, target = self.cache[index]
            return image, dict(target)
        item = self._load_item(index)
        if self.cache is not None:
            self.cache[index] = item
        return item

    def _load_item(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.records[index]
        image = self.load(index)
        h, w = image.height, image.width
        objs = rec.objects
        boxes = torch.tensor([o.bbox for o in objs], dtype=torch.float32).reshape(-1, 4)
        labels, desc = object_indices(objs, self.class_index, self.desc_index, self.label_from)
        sample = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
            "desc": desc,
        }
        out = self.transform(sample)
        img = out["image"]
        size = img.shape[-2:]
        target = {
            "boxes": boxes_to_model(out["boxes"].as_subclass(torch.Tensor).float(), size).clamp(0.0, 1.0),
            "labels": out["labels"],
            "desc": out["desc"],
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "index": index,
            "image": str(self.image_path(index)),
        }
        return img.as_subclass(torch.Tensor), target


def detection_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images ``(B, 3, S, S)``; keep targets as a list of dicts (object counts differ)."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


class DetectionDataModule(L.LightningDataModule):
    """Object detection with descriptions over grounding JSONL, COCO json or the built-in shapes set.

    ``class_names`` (sorted labels of all splits) and ``desc_vocab`` (sorted descriptions of the training
    split) are known after construction; the CLI links them into the task's init arguments.
    """

    def __init__(
        self,
        source: Literal["auto", "grounding", "coco", "shapes"] = "auto",
        path: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        predict_path: str | None = None,
        image_size: int = 64,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: Literal["none", "hflip", "basic"] = "none",
        label_from: Literal["category", "desc", "object"] = "category",
        val_fraction: float = 0.1,
        on_corrupt: Literal["error", "skip"] = "skip",
        cache: bool = False,
        shapes: ShapesConfig = ShapesConfig(),
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        """
        Args:
            source: ``shapes`` (the built-in synthetic set, generated into ``path`` on first use),
                ``grounding`` (``{split}.jsonl`` files), ``coco`` (``{split}.json`` files) or ``auto``
                (whichever of those ``path`` holds).
            path: Dataset folder holding the split files (shapes: where the set is written; default
                ``data/shapes``).
            train_file: Training annotations (.jsonl or .json), overriding ``path``'s.
            val_file: Validation annotations; default ``path``'s, else ``val_fraction`` of train.
            test_file: Test annotations; default ``path``'s, else the validation split.
            image_root: Folder image paths are relative to (default: each annotation file's folder).
            predict_path: What ``predict`` runs on: an annotation file or a folder of images (default: test).
            image_size: Side of the square images fed to the model (boxes are rescaled with them).
            batch_size: Training batch size (per device).
            eval_batch_size: Validation/test/predict batch size; defaults to ``batch_size``.
            num_workers: DataLoader worker processes.
            augment: Training augmentation: ``none``, ``hflip`` or ``basic`` (flip + affine jitter).
            label_from: An object's class: ``category`` (its ``category`` key, else ``desc`` up to the first
                ``/``), ``desc`` (the whole description) or ``object`` (class-agnostic).
            val_fraction: Share of train held out as validation when there is no validation file.
            on_corrupt: A malformed record, or one whose image is missing, not an image or outside the dataset
                folder: ``skip`` it (one warning lists them; the default) or ``error`` (stop at the first,
                naming it). Boxes outside their image are clamped either way (with a warning). An image that
                breaks while decoding stops training, naming the file.
            cache: Keep decoded, resized images in memory after their first epoch (evaluation splits, and
                training with ``augment: none``); for datasets that fit in RAM (``S * S * 3`` floats each).
            shapes: Parameters of the synthetic set (``source: shapes``).
            seed: Seed of the training order (and of the validation hold-out).
            pin_memory: Pin host memory; default: when CUDA is available.
            persistent_workers: Keep loader workers alive between epochs (with ``num_workers > 0``).
        """
        super().__init__()
        self.save_hyperparameters()
        if source not in DETECTION_SOURCES:
            raise UserError(f"unknown detection source '{source}'; choose one of {list(DETECTION_SOURCES)}")
        if label_from not in LABEL_FROM:
            raise UserError(f"data.label_from must be one of {list(LABEL_FROM)}, got '{label_from}'")
        if int(image_size) < 8 or int(batch_size) < 1 or num_workers < 0:
            raise UserError("data.image_size must be >= 8, batch_size >= 1 and num_workers >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.source = source
        self.shapes_cfg = shapes if isinstance(shapes, ShapesConfig) else ShapesConfig(**(shapes or {}))
        self.hparams["shapes"] = asdict(self.shapes_cfg)  # plain data, so checkpoints load with weights_only
        self.path = Path(path) if path else (Path("data/shapes") if source == "shapes" else None)
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.image_root = Path(image_root) if image_root else None
        self.predict_path = predict_path
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.augment = augment
        self.label_from = label_from
        self.val_fraction = float(val_fraction)
        if on_corrupt not in ("error", "skip"):
            raise UserError(f"data.on_corrupt must be 'error' or 'skip', got '{on_corrupt}'")
        self.strict = on_corrupt == "error"
        self.cache = cache
        self.seed = int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_transform = build_detection_transform(self.image_size, train=True, augment=augment)
        self.eval_transform = build_detection_transform(self.image_size, train=False)
        self.errors: list[RecordError] = []
        self._splits: dict[str, tuple[list[GroundingRecord], Path]] | None = None
        self._datasets: dict[tuple[str, bool], DetectionDataset] = {}
        self._class_names: list[str] | None = None
        self._desc_vocab: list[str] | None = None

    # ------------------------------------------------------------------ files
    def _resolve_files(self) -> dict[str, Path | None]:
        files: dict[str, Path | None] = {s: Path(f) if f else None for s, f in self.files.items()}
        if self.path is not None and any(f is None for f in files.values()):
            if not self.path.is_dir():
                raise DatasetError(
                    f"dataset folder '{self.path}' does not exist; give data.path a folder with "
                    "train/val/test .jsonl or .json files (or 'transferkit data make-shapes OUT')"
                )
            exts = {"grounding": (".jsonl",), "coco": (".json",)}.get(self.source, (".jsonl", ".json"))
            for split in SPLITS:
                if files[split] is None:
                    found = [self.path / f"{split}{e}" for e in exts if (self.path / f"{split}{e}").is_file()]
                    files[split] = found[0] if found else None
        if files["train"] is None:
            raise DatasetError(
                f"no training annotations: give data.train_file, or a data.path holding train.jsonl "
                f"(grounding) or train.json (COCO); looked in '{self.path}'"
            )
        for split, f in files.items():
            if f is not None and not f.is_file():
                raise DatasetError(f"{split} annotation file '{f}' does not exist")
        return files

    def prepare_data(self) -> None:
        if self.source == "shapes":
            ensure_shapes(self.path, self.shapes_cfg)

    def _load(self) -> dict[str, tuple[list[GroundingRecord], Path]]:
        if self._splits is not None:
            return self._splits
        if self.source == "shapes":
            ensure_shapes(self.path, self.shapes_cfg)  # no-op when prepare_data already made it
        files = self._resolve_files()
        splits: dict[str, tuple[list[GroundingRecord], Path]] = {}
        for split, f in files.items():
            if f is None:
                continue
            root = self.image_root or f.parent
            records, errors = read_annotations(f, root, strict=self.strict)
            self.errors += errors
            if not records:
                raise DatasetError(f"{split} annotations '{f}' hold no usable record")
            splits[split] = (records, root)
        if "val" not in splits:
            records, root = splits["train"]
            if len(records) < 2:
                raise DatasetError("need at least 2 training records to hold out a validation split")
            order = np.random.default_rng(self.seed).permutation(len(records))
            n_val = max(1, int(round(len(records) * self.val_fraction)))
            splits["val"] = ([records[i] for i in sorted(order[:n_val])], root)
            splits["train"] = ([records[i] for i in sorted(order[n_val:])], root)
            log.info("no validation file: held out %d of %d training records", n_val, len(records))
        if "test" not in splits:
            splits["test"] = splits["val"]
        labels = sorted(
            {object_label(o, self.label_from) for recs, _ in splits.values() for r in recs for o in r.objects}
        )
        if not labels:
            raise DatasetError("the annotations hold no object at all; nothing to detect")
        self._class_names = labels
        self._desc_vocab = sorted({o.desc for r in splits["train"][0] for o in r.objects})
        self._splits = splits
        return splits

    # ------------------------------------------------------------------ vocabularies
    @property
    def class_names(self) -> list[str]:
        self._load()
        assert self._class_names is not None
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def desc_vocab(self) -> list[str]:
        self._load()
        assert self._desc_vocab is not None
        return list(self._desc_vocab)

    # ------------------------------------------------------------------ datasets and loaders
    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _make_dataset(self, records: Sequence[GroundingRecord], root: Path, train: bool) -> DetectionDataset:
        return DetectionDataset(
            records,
            root,
            {n: i for i, n in enumerate(self.class_names)},
            {d: i for i, d in enumerate(self.desc_vocab)},
            self.train_transform if train else self.eval_transform,
            self.label_from,
            cache=self.cache,
        )

    def dataset(self, split: str, train_transform: bool = False) -> DetectionDataset:
        """The ``split`` dataset with the training (augmenting) or evaluation transform."""
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; choose one of {list(SPLITS)}")
        key = (split, bool(train_transform))
        if key not in self._datasets:
            records, root = self._load()[split]
            self._datasets[key] = self._make_dataset(records, root, train_transform)
        return self._datasets[key]

    def predict_dataset(self) -> DetectionDataset:
        """``predict_path`` (annotation file or image folder) or the test split, with the eval transform."""
        if self.predict_path is None:
            return self.dataset("test")
        p = Path(self.predict_path)
        if p.is_dir():
            images = [str(Path(f).relative_to(p)) for f in scan_images(p)]
            return self._make_dataset([GroundingRecord([i]) for i in images], p, train=False)
        if p.is_file():
            root = self.image_root or p.parent
            records, _ = read_annotations(p, root, strict=self.strict)
            return self._make_dataset(records, root, train=False)
        raise DatasetError(f"predict_path '{p}' is neither an annotation file nor a folder of images")

    def _loader(self, ds: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=detection_collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train", train_transform=True)
        sampler = shuffling_sampler(ds, getattr(self, "trainer", None), self.seed)
        return self._loader(ds, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset(), self.eval_batch_size, shuffle=False)

    def describe(self) -> dict[str, Any]:
        """Source, files, vocabularies and per-split image/object counts, for reports."""
        splits = self._load()
        return {
            "source": self.source,
            "path": None if self.path is None else str(self.path),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "desc_vocab_size": len(self.desc_vocab),
            "label_from": self.label_from,
            "test_is_val": splits["test"] is splits["val"],
            "skipped_records": [str(e) for e in self.errors[:20]],
            "splits": {
                s: {"images": len(recs), "objects": sum(len(r.objects) for r in recs)}
                for s, (recs, _) in splits.items()
            },
        }
