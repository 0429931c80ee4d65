"""Data for transferkit: sources (digits, imagefolder, csv, CIFAR), transform presets, dataset checks and
the image-classification DataModule. Images leave this package as ``(3, H, W)`` float tensors in ``[0, 1]``.

Importing the package imports the DataModule (and lightning), so LightningCLI finds it by its short
``class_path`` name.
"""

from transferkit.data.datamodule import ImageClassificationDataModule
from transferkit.data.sources import (
    SOURCES,
    SPLITS,
    ArrayImageDataset,
    ClassificationDataset,
    ClassificationSource,
    ImageFileDataset,
    build_source,
    collate_drop_none,
    load_rgb,
)
from transferkit.data.transforms import AUGMENTS, build_eval_transform, build_transform
from transferkit.data.validate import DatasetReport, Issue, check_dataset

__all__ = [
    "AUGMENTS",
    "SOURCES",
    "SPLITS",
    "ArrayImageDataset",
    "ClassificationDataset",
    "ClassificationSource",
    "DatasetReport",
    "ImageClassificationDataModule",
    "ImageFileDataset",
    "Issue",
    "build_eval_transform",
    "build_source",
    "build_transform",
    "check_dataset",
    "collate_drop_none",
    "load_rgb",
]
