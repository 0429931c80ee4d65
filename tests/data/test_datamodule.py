import logging
import os
import zlib
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DistributedSampler

from transferkit.data import ImageClassificationDataModule
from transferkit.errors import DatasetError, UserError

CLASSES = ("cat", "dog", "fox")


def make_folder(root: Path, splits=("train", "val", "test"), n: int = 4) -> Path:
    for split in splits:
        for cls in CLASSES:
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                rng = np.random.default_rng(zlib.crc32(str(path).encode()))
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return root


def epoch_order(dm: ImageClassificationDataModule, epoch: int) -> list[int]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader.sampler)


def test_classes_known_at_init_and_batches(tmp_path):
    dm = ImageClassificationDataModule(
        "imagefolder", str(make_folder(tmp_path / "ds")), image_size=16, batch_size=5
    )
    assert dm.num_classes == 3 and dm.class_names == list(CLASSES)
    assert dm.hflip == 0.5
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1
    assert len(dm.val_dataloader().dataset) == 12 and len(dm.predict_dataloader().dataset) == 12
    d = dm.describe()
    assert d["splits"]["train"] == {"count": 12, "per_class": {c: 4 for c in CLASSES}}
    assert d["num_classes"] == 3 and d["test_is_val"] is False


def test_digits_split_fixed_regardless_of_seed_and_no_flip():
    a = ImageClassificationDataModule(image_size=8, seed=0)
    b = ImageClassificationDataModule(image_size=8, seed=7, augment="basic")
    assert a.hflip == 0.0 and b.hflip == 0.0  # a mirrored digit is not a digit
    for split in ("train", "val", "test"):
        assert a.dataset(split).targets == b.dataset(split).targets
        assert a.fingerprint(split) == b.fingerprint(split)  # seed and train augmentation do not matter
    assert len({a.fingerprint(s) for s in ("train", "val", "test")}) == 3


def test_sampler_order_depends_only_on_seed_and_epoch():
    dm = ImageClassificationDataModule(image_size=8, seed=3)
    same_seed = ImageClassificationDataModule(image_size=8, seed=3)
    other_seed = ImageClassificationDataModule(image_size=8, seed=4)
    e0, e1 = epoch_order(dm, 0), epoch_order(dm, 1)
    assert sorted(e0) == list(range(1077))
    assert e0 != e1
    torch.manual_seed(99)  # the global RNG state does not matter
    assert epoch_order(same_seed, 1) == e1 and epoch_order(same_seed, 0) == e0
    assert epoch_order(other_seed, 0) != e0


def test_ddp_shards_with_distributed_sampler():
    orders = []
    for rank in (0, 1):
        dm = ImageClassificationDataModule(image_size=8, seed=0)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) == (2, rank)
        sampler.set_epoch(5)
        orders.append(list(sampler))
    assert len(orders[0]) == len(orders[1]) == 539  # 1077 padded to 1078
    assert set(orders[0]) | set(orders[1]) == set(range(1077))


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 10)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, y.tolist()))
        return F.cross_entropy(self.head(x.mean(dim=(2, 3))), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, max_epochs: int, ckpt: str | None = None) -> tuple[L.Trainer, _Recorder]:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    model = _Recorder()
    trainer.fit(
        model, datamodule=ImageClassificationDataModule(image_size=8, batch_size=16, seed=1), ckpt_path=ckpt
    )
    return trainer, model


def test_resumed_run_sees_the_same_batches(tmp_path):
    _, full = _fit(tmp_path, max_epochs=3)
    by_epoch = {e: [y for ep, y in full.seen if ep == e] for e in range(3)}
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]  # Lightning calls set_epoch every epoch

    trainer, first = _fit(tmp_path, max_epochs=2)
    assert [y for _, y in first.seen] == by_epoch[0] + by_epoch[1]
    ckpt = str(tmp_path / "epoch2.ckpt")
    trainer.save_checkpoint(ckpt)
    _, resumed = _fit(tmp_path, max_epochs=3, ckpt=ckpt)
    assert resumed.seen and [e for e, _ in resumed.seen] == [2, 2, 2]
    assert [y for _, y in resumed.seen] == by_epoch[2]


def test_fingerprint_tracks_files_and_transform(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("train", "val"))
    dm = ImageClassificationDataModule("imagefolder", str(root), image_size=16)
    fp = {s: dm.fingerprint(s) for s in ("train", "val", "test")}
    assert fp["test"] == fp["val"]  # no test/: the same images
    assert (
        ImageClassificationDataModule("imagefolder", str(root), image_size=16, augment="randaug").fingerprint(
            "val"
        )
        == fp["val"]
    )
    assert (
        ImageClassificationDataModule("imagefolder", str(root), image_size=24).fingerprint("val") != fp["val"]
    )
    assert (
        ImageClassificationDataModule("imagefolder", str(root), image_size=16, crop_pct=0.875).fingerprint(
            "val"
        )
        != fp["val"]
    )
    # rewrite one val image: size/mtime change -> new fingerprint; train untouched
    target = root / "val" / "dog" / "2.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    dm2 = ImageClassificationDataModule("imagefolder", str(root), image_size=16)
    assert dm2.fingerprint("val") != fp["val"] and dm2.fingerprint("train") == fp["train"]
    # an added file changes the split too
    Image.new("RGB", (20, 20)).save(root / "train" / "cat" / "new.png")
    assert (
        ImageClassificationDataModule("imagefolder", str(root), image_size=16).fingerprint("train")
        != fp["train"]
    )


def test_skip_mode_drops_corrupt_image_from_batch(tmp_path, caplog):
    root = make_folder(tmp_path / "ds")
    (root / "val" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    skip = ImageClassificationDataModule(
        "imagefolder", str(root), image_size=16, batch_size=64, on_corrupt="skip", num_workers=0
    )  # in the main process, where caplog sees the warning (a worker logs to stderr)
    with caplog.at_level(logging.WARNING):
        images, labels = next(iter(skip.val_dataloader()))
    assert images.shape == (12, 3, 16, 16) and labels.shape == (12,)
    assert "broken.png" in caplog.text
    strict = ImageClassificationDataModule("imagefolder", str(root), image_size=16, batch_size=64)
    with pytest.raises(DatasetError, match=r"broken\.png.*on_corrupt=skip"):
        next(iter(strict.val_dataloader()))


def test_bad_options_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown data.source 'imagenet'"):
        ImageClassificationDataModule("imagenet")
    with pytest.raises(UserError, match="unknown data.augment 'heavy'"):
        ImageClassificationDataModule(augment="heavy")
    with pytest.raises(UserError, match="on_corrupt"):
        ImageClassificationDataModule(on_corrupt="ignore")
    with pytest.raises(UserError, match="batch_size must be >= 1"):
        ImageClassificationDataModule(batch_size=0)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        ImageClassificationDataModule(image_size=8).dataset("dev")
    with pytest.raises(DatasetError, match="no val/ folder"):
        ImageClassificationDataModule("imagefolder", str(make_folder(tmp_path / "t", splits=("train",))))


def test_file_sources_decode_in_workers_by_default_and_in_memory_sources_do_not(tmp_path):
    import os

    root = make_folder(tmp_path / "ds")
    files = ImageClassificationDataModule("imagefolder", str(root), image_size=16)
    assert files.num_workers == min(4, (os.cpu_count() or 1) - 1) and files.persistent_workers == (
        files.num_workers > 0
    )
    assert ImageClassificationDataModule("digits", image_size=16).num_workers == 0
    assert ImageClassificationDataModule("imagefolder", str(root), num_workers=0).num_workers == 0
