"""Unlabeled images with DINO multi-crop: crops, sources, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data.unlabeled import MultiCropTransform, UnlabeledImageDataModule
from transferkit.errors import DatasetError, UserError


def test_multicrop_shapes_and_range():
    t = MultiCropTransform(48, num_local_crops=3, local_crop_size=16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    crops = t(img)
    assert [c.shape for c in crops] == [(3, 48, 48)] * 2 + [(3, 16, 16)] * 3
    for c in crops:
        assert c.dtype == torch.float32 and 0.0 <= float(c.min()) and float(c.max()) <= 1.0
    assert not torch.equal(crops[0], crops[1])  # two different random views


def test_folder_source_reads_nested_images_and_batches_crops(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        sub = tmp_path / "imgs" / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    dm = UnlabeledImageDataModule(
        source="folder",
        path=str(tmp_path / "imgs"),
        image_size=32,
        num_local_crops=2,
        local_crop_size=16,
        batch_size=4,
    )
    dm.setup()
    assert len(dm.images()) == 10 and dm.crop_sizes == [32, 32, 16, 16]
    crops, _ = next(iter(dm.train_dataloader()))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert dm.steps_per_epoch() == 2 and dm.describe()["images"] == 10


def test_digits_default_uses_the_train_split_without_labels():
    dm = UnlabeledImageDataModule(image_size=16, batch_size=32, num_local_crops=0)
    dm.setup()
    from transferkit.data.sources import DigitsSource

    train = DigitsSource(16).splits()["train"]
    assert len(dm.images()) == len(train) and np.array_equal(dm.images().images, train.images)
    assert dm.hparams.hflip is None and dm.transform.num_local_crops == 0


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        UnlabeledImageDataModule(source="folder", path=str(tmp_path / "empty")).setup()
    with pytest.raises(UserError, match="needs data.path"):
        UnlabeledImageDataModule(source="folder")
    with pytest.raises(UserError, match="unknown unlabeled source"):
        UnlabeledImageDataModule(source="imagenet")
    with pytest.raises(UserError, match="local_crops_scale"):
        UnlabeledImageDataModule(local_crops_scale=(0.5, 0.2))
