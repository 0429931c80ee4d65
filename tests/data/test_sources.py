import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from transferkit.data.sources import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    ImageFileDataset,
    build_source,
    collate_drop_none,
    load_rgb,
)
from transferkit.errors import DatasetError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from image_folders import CLASSES, make_folder, write_image  # noqa: E402


# ---------------------------------------------------------------------------------------------- digits
def test_digits_fixed_stratified_split_and_pixels():
    src = build_source("digits", image_size=8)
    splits = src.splits()
    assert src.class_names == [str(i) for i in range(10)]
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    digits = load_digits()
    totals = np.bincount(digits.target)
    for split, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.array(splits[split].class_counts())
        assert np.all(np.abs(counts - frac * totals) <= 1.5), (split, counts)  # stratified
    # at image_size=8 the images are the real digits scaled 0..16 -> 0..255, and the splits partition them
    expected = np.round(digits.images * 255 / 16).astype(np.uint8)
    got = np.concatenate([splits[s].images[..., 0] for s in ("train", "val", "test")])
    assert sorted(a.tobytes() for a in got) == sorted(a.tobytes() for a in expected)
    # fixed: a second build gives the same split (no dependence on global RNG state)
    torch.manual_seed(123)
    np.random.seed(123)
    again = build_source("digits", image_size=8).splits()
    assert np.array_equal(again["test"].images, splits["test"].images)
    assert again["val"].targets == splits["val"].targets


def test_digits_items_are_rgb_in_unit_range():
    ds = build_source("digits", image_size=24).splits()["train"]
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert isinstance(y, int) and 0 <= y < 10


# ---------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_happy_path(tmp_path):
    root = make_folder(tmp_path / "ds")
    src = build_source("imagefolder", root)
    assert src.class_names == list(CLASSES)
    splits = src.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 12, "test": 12}
    assert splits["test"] is not splits["val"]
    x, y = splits["train"][5]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert splits["train"].paths[5].split("/")[-2] == CLASSES[y]
    batch = collate_drop_none([splits["val"][i] for i in range(4)])
    assert batch[0].shape == (4, 3, 16, 16) and batch[1].dtype == torch.int64


def test_imagefolder_without_test_uses_val(tmp_path, caplog):
    root = make_folder(tmp_path / "ds", splits=("train", "val"))
    with caplog.at_level(logging.WARNING):
        splits = build_source("imagefolder", root).splits()
    assert splits["test"] is splits["val"]
    assert "no test/ folder" in caplog.text


def test_imagefolder_val_fraction_splits_train(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("train",), n=10)
    with pytest.raises(DatasetError, match=r"no val/ folder.*val_fraction"):
        build_source("imagefolder", root)
    splits = build_source("imagefolder", root, val_fraction=0.2).splits()
    assert splits["val"].class_counts() == [2, 2, 2] and splits["train"].class_counts() == [8, 8, 8]
    assert not set(splits["val"].paths) & set(splits["train"].paths)
    again = build_source("imagefolder", root, val_fraction=0.2).splits()
    assert again["val"].paths == splits["val"].paths  # fixed seed


def test_imagefolder_bad_layouts(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_source("imagefolder", tmp_path / "nope")
    (tmp_path / "file.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="source=csv"):
        build_source("imagefolder", tmp_path / "file.csv")

    flat = tmp_path / "flat"
    for cls in CLASSES:
        write_image(flat / cls / "0.png")
    with pytest.raises(DatasetError, match=r"no train/ folder.*move them into .*train"):
        build_source("imagefolder", flat)

    noclass = tmp_path / "noclass"
    write_image(noclass / "train" / "a.png")
    (noclass / "val").mkdir()
    with pytest.raises(DatasetError, match=r"train has no class folders.*<class_name>"):
        build_source("imagefolder", noclass)

    empty = make_folder(tmp_path / "empty")
    for f in (empty / "val" / "cat").iterdir():
        f.unlink()
    (empty / "val" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"class folder .*val/cat has no images"):
        build_source("imagefolder", empty)


def test_imagefolder_class_mismatch_names_classes(tmp_path):
    root = make_folder(tmp_path / "ds")
    for f in (root / "test" / "fox").iterdir():
        f.unlink()
    (root / "test" / "fox").rmdir()
    write_image(root / "val" / "owl" / "0.png")
    with pytest.raises(DatasetError) as e:
        build_source("imagefolder", root)
    msg = str(e.value)
    assert "train/ lacks ['owl']" in msg and "val/" in msg


def test_imagefolder_ignores_hidden_folders(tmp_path):
    root = make_folder(tmp_path / "ds")
    write_image(root / "train" / ".ipynb_checkpoints" / "0.png")
    assert build_source("imagefolder", root).class_names == list(CLASSES)


def test_corrupt_and_empty_files_error_mode_names_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    bad = root / "train" / "dog" / "bad.png"
    bad.write_bytes(b"this is not an image")
    empty = root / "train" / "dog" / "empty.jpg"
    empty.write_bytes(b"")
    ds = build_source("imagefolder", root).splits()["train"]
    with pytest.raises(DatasetError) as e:
        ds[ds.paths.index(str(bad.resolve()))]
    msg = str(e.value)
    assert "bad.png" in msg and "on_corrupt=skip" in msg and "transferkit data check" in msg
    with pytest.raises(DatasetError, match=r"empty\.jpg: the file is empty \(0 bytes\)"):
        ds[ds.paths.index(str(empty.resolve()))]


def test_corrupt_truncated_skip_mode_drops_from_batch(tmp_path, caplog):
    root = make_folder(tmp_path / "ds")
    good = root / "train" / "cat" / "1.png"
    data = good.read_bytes()
    truncated = root / "train" / "cat" / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    (root / "train" / "cat" / "zero.png").write_bytes(b"")
    ds = build_source("imagefolder", root, on_corrupt="skip").splits()["train"]
    assert len(ds) == 14
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
        ds[ds.paths.index(str(truncated.resolve()))]  # second read: no second warning
    assert sum(item is None for item in items) == 2
    images, labels = collate_drop_none(items)
    assert images.shape == (12, 3, 16, 16) and labels.shape == (12,)
    assert caplog.text.count("truncated.png") == 1 and caplog.text.count("zero.png") == 1
    assert collate_drop_none([None, None]) is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    path = tmp_path / f"im_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    write_image(path, mode=mode)
    with Image.open(path) as im:
        assert im.mode == mode
        expected = np.asarray(im.convert("RGB"))
    ds = ImageFileDataset([(str(path), 0)], ["a"])
    x, _ = ds[0]
    assert x.shape == (3, 16, 16)
    assert np.array_equal((x * 255).round().byte().permute(1, 2, 0).numpy(), expected)
    if mode in ("L", "LA"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])


def test_16bit_grayscale_is_rescaled(tmp_path):
    path = tmp_path / "deep.png"
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(arr).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert np.asarray(img)[..., 0].tolist() == [[0, 255], [128, 1]]


# ---------------------------------------------------------------------------------------------- csv
def _csv(tmp_path: Path, with_split: bool, n: int = 10) -> Path:
    lines = ["path,label,split" if with_split else "path,label"]
    for cls in CLASSES:
        for i in range(n):
            rel = f"img/{cls}_{i}.png"
            write_image(tmp_path / rel)
            split = ("train", "train", "val", "test")[i % 4]
            lines.append(f"{rel},{cls},{split}" if with_split else f"{rel},{cls}")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_without_split_is_fixed_60_20_20(tmp_path):
    src = build_source("csv", _csv(tmp_path, with_split=False))
    splits = src.splits()
    assert src.class_names == list(CLASSES)
    assert [splits[s].class_counts() for s in ("train", "val", "test")] == [[6, 6, 6], [2, 2, 2], [2, 2, 2]]
    x, y = splits["test"][0]
    assert x.shape == (3, 16, 16)
    assert Path(splits["test"].paths[0]).name.startswith(CLASSES[y])
    again = build_source("csv", tmp_path / "labels.csv").splits()
    assert again["test"].paths == splits["test"].paths


def test_csv_with_split_column(tmp_path):
    splits = build_source("csv", _csv(tmp_path, with_split=True)).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 6, "test": 6}
    assert all(Path(p).parent == tmp_path / "img" for p in splits["val"].paths)


def test_csv_bad_lines_name_line_numbers(tmp_path):
    path = _csv(tmp_path, with_split=True, n=4)
    text = path.read_text().splitlines()
    text[2] = "img/missing.png,cat,train"
    text[4] = "img/cat_3.png,cat,holdout"
    text[6] = "img/dog_1.png,,train"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError) as e:
        build_source("csv", path)
    msg = str(e.value)
    assert "line 3: file not found" in msg and "missing.png" in msg
    assert "line 5: split must be one of" in msg and "holdout" in msg
    assert "line 7: empty label" in msg

    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("file,class\nimg/cat_0.png,cat\n")
    with pytest.raises(
        DatasetError, match=r"line 1: the header needs columns path,label.*missing \['path', 'label'\]"
    ):
        build_source("csv", bad_header)


# ---------------------------------------------------------------------------------------------- cifar
def _fake_cifar10(root: Path, per_batch: int = 20) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_batch)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)


def test_cifar_missing_files_and_failed_download(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    with pytest.raises(DatasetError, match=r"cifar10 files not found.*cifar-10-python.tar.gz.*download=true"):
        build_source("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="needs path"):
        build_source("cifar100", None)

    def offline(self):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(CIFAR10, "download", offline)
    src = build_source("cifar10", tmp_path, download=True)  # nothing checked until prepare
    with pytest.raises(DatasetError, match=rf"name resolution.*place the extracted .* under {tmp_path}"):
        src.prepare()


def test_cifar_from_disk_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    _fake_cifar10(tmp_path)
    # fake files (no md5 match) read by the real torchvision loader
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args: True)
    src = build_source("cifar10", tmp_path / "cifar-10-batches-py", val_fraction=0.2)
    assert src.path == tmp_path.resolve() and src.class_names == CIFAR10_CLASSES
    splits = src.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 80, "val": 20, "test": 20}
    assert splits["val"].class_counts() == [2] * 10
    x, y = splits["test"][3]
    assert x.shape == (3, 32, 32) and y == 3


def test_build_source_rejects_bad_options(tmp_path):
    with pytest.raises(UserError, match="unknown data.source 'mnist'.*digits"):
        build_source("mnist")
    with pytest.raises(UserError, match="needs path"):
        build_source("imagefolder")
    with pytest.raises(UserError, match="on_corrupt"):
        build_source("digits", on_corrupt="ignore")
    with pytest.raises(UserError, match="val_fraction"):
        build_source("imagefolder", tmp_path, val_fraction=1.5)


# ---------------------------------------------------------------------------------------------- hostile folders
def _loop(root):  # train/cat/loop -> .. (the train folder: every class would be counted again as cat)
    (root / "train" / "cat" / "loop").symlink_to("..", target_is_directory=True)


def _repeat(root):  # train/cat/more -> ../dog (dog's images counted again, labelled cat)
    (root / "train" / "cat" / "more").symlink_to(root / "train" / "dog", target_is_directory=True)


HOSTILE = {
    "a link loop": (_loop, "symbolic link loop", "link-loop"),
    "a link to another class": (_repeat, "also part of the dataset", "link-repeat"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_symlink_tricks_are_errors_naming_the_link_in_the_loader_and_the_checker(case, tmp_path):
    from transferkit.data.validate import check_dataset

    root = make_folder(tmp_path / "data", n=2)
    make, says, kind = HOSTILE[case]
    make(root)
    with pytest.raises(DatasetError, match=says) as e:
        build_source("imagefolder", str(root))
    assert str(root / "train" / "cat") in str(e.value) and "\n" not in str(e.value)
    report = check_dataset(root)
    found = [i for i in report.issues if i.kind == kind]
    assert found and found[0].severity == "error" and str(root / "train" / "cat") in str(found[0].path)


def test_a_link_leaving_the_dataset_is_followed_with_a_warning(tmp_path, caplog):
    elsewhere = make_folder(tmp_path / "other", splits=("train",), classes=("cat",), n=3)
    root = make_folder(tmp_path / "data", n=2)
    (root / "train" / "cat" / "extra").symlink_to(elsewhere / "train" / "cat", target_is_directory=True)
    src = build_source("imagefolder", str(root))
    assert len(src.samples["train"]) == 2 * len(CLASSES) + 3
    assert "symbolic link leaving the dataset folder" in caplog.text


def test_a_file_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    import os

    root = make_folder(tmp_path / "data", n=2)
    odd = os.fsdecode(b"b\xffd")
    for split in ("train", "val", "test"):
        write_image(root / split / odd / os.fsdecode(b"\xfe.png"))
    src = build_source("imagefolder", str(root))
    assert "b\\xffd" in src.class_names
    ds = src.splits()["train"]
    assert ds.content_digest() and ds[len(ds) - 1][0].shape[0] == 3


def test_a_decompression_bomb_sized_image_is_said_once_in_our_words(tmp_path, caplog, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 12x12 image is then "too large" by PIL's check
    write_image(tmp_path / "big.png", size=12)
    load_rgb(tmp_path / "big.png")
    load_rgb(tmp_path / "big.png")
    assert caplog.text.count("decompression-bomb check") == 1
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    write_image(tmp_path / "huge.png", size=16)  # 256 > 2 x 100 pixels: PIL refuses it
    ds = ImageFileDataset([(str(tmp_path / "huge.png"), 0)], ["x"], on_corrupt="error")
    with pytest.raises(DatasetError, match="more than 0M pixels|more than PIL decodes"):
        ds[0]
