"""Data for transferkit: sources (digits, imagefolder, csv, CIFAR), transform presets, dataset checks and
the image-classification DataModule. Images leave this package as ``(3, H, W)`` float tensors in ``[0, 1]``.

Names are imported on first use (``transferkit.data.ImageClassificationDataModule`` imports lightning then);
LightningCLI's short ``class_path`` names need ``transferkit.data.datamodule`` imported (``run_lightning`` does).
"""

from transferkit.utils.lazy import lazy_exports

#: public names and the module that defines each (imported on first use, so ``transferkit.data.spec`` and
#: ``--help`` do not pull in lightning)
_LAZY = {
    "ImageClassificationDataModule": "datamodule",
    **{
        n: "sources"
        for n in (
            "SOURCES",
            "SPLITS",
            "ArrayImageDataset",
            "ClassificationDataset",
            "ClassificationSource",
            "ImageFileDataset",
            "build_source",
            "collate_drop_none",
            "load_rgb",
        )
    },  # fmt: skip
    "AUGMENTS": "options",
    "DataOptions": "options",
    **{n: "transforms" for n in ("build_eval_transform", "build_transform")},
    **{n: "validate" for n in ("DatasetReport", "Issue", "check_dataset")},
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AUGMENTS",
    "SOURCES",
    "SPLITS",
    "ArrayImageDataset",
    "ClassificationDataset",
    "ClassificationSource",
    "DataOptions",
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
