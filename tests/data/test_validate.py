import json
import shutil
import sys
from pathlib import Path

import pytest

from transferkit.data.validate import check_dataset
from transferkit.errors import DatasetError

sys.path.insert(0, str(Path(__file__).parent))
from image_folders import CLASSES, make_folder, write_image  # noqa: E402


def kinds(report, severity=None):
    return sorted({i.kind for i in report.issues if severity is None or i.severity == severity})


def issue(report, kind):
    found = [i for i in report.issues if i.kind == kind]
    assert found, (kind, report.issues)
    return found


def test_clean_folder_is_ok(tmp_path):
    report = check_dataset(make_folder(tmp_path / "ds"))
    assert report.ok and report.issues == []
    assert report.source == "imagefolder" and report.class_names == list(CLASSES)
    assert report.counts == {s: {c: 4 for c in CLASSES} for s in ("train", "val", "test")}
    assert report.imbalance("train") == 1.0 and report.files_checked == 36
    json.dumps(report.to_dict())


def test_broken_folder_reports_every_issue(tmp_path):
    root = make_folder(tmp_path / "ds")
    good = (root / "train" / "cat" / "1.png").read_bytes()
    (root / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "val" / "dog" / "zero.png").write_bytes(b"")
    shutil.copy(root / "train" / "fox" / "0.jpg", root / "test" / "fox" / "leaked.jpg")
    write_image(root / "train" / "fox" / "alpha.png", mode="RGBA")
    write_image(root / "train" / "fox" / "gray.png", mode="L")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    (root / "val" / "owl").mkdir()
    (root / "train" / "owl").mkdir()
    (root / "test" / "owl").mkdir()
    (root / "train" / "README.md").write_text("stray")

    report = check_dataset(root, workers=2)
    assert not report.ok
    assert kinds(report, "error") == ["corrupt", "duplicate", "empty-class", "zero-byte"]
    assert kinds(report, "warning") == ["converted", "non-image", "stray-file"]

    corrupt = {Path(i.path).name: i.message for i in issue(report, "corrupt")}
    assert set(corrupt) == {"truncated.png", "garbage.jpg"}
    assert "truncated" in corrupt["truncated.png"] and "on_corrupt=skip" in corrupt["garbage.jpg"]
    assert [Path(i.path).name for i in issue(report, "zero-byte")] == ["zero.png"]
    (dup,) = issue(report, "duplicate")
    assert "train and test" in dup.message and "leaked.jpg" in dup.message and "0.jpg" in dup.message
    assert {Path(i.path).parts[-2:] for i in issue(report, "empty-class")} == {
        ("train", "owl"),
        ("val", "owl"),
        ("test", "owl"),
    }
    converted = " ".join(i.message for i in issue(report, "converted"))
    assert "RGBA" in converted and "grayscale (L)" in converted and "converted to RGB" in converted
    assert Path(issue(report, "non-image")[0].path).name == "notes.txt"
    assert report.counts["train"]["owl"] == 0 and report.imbalance("train") == float("inf")
    d = report.to_dict()
    assert d["ok"] is False and d["imbalance"]["train"] is None
    json.dumps(d)


def test_layout_problems(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("train",))
    report = check_dataset(root)
    assert report.ok  # usable with val_fraction
    messages = " ".join(i.message for i in issue(report, "missing-split"))
    assert "no val/" in messages and "val_fraction" in messages and "no test/" in messages

    write_image(root / "val" / "cat" / "0.png")
    write_image(root / "val" / "dog" / "0.png")
    report = check_dataset(root)
    (mismatch,) = issue(report, "class-mismatch")
    assert "val/ lacks class folders ['fox']" in mismatch.message and not report.ok

    flat = tmp_path / "flat"
    write_image(flat / "cat" / "0.png")
    report = check_dataset(flat)
    (missing,) = [i for i in report.errors if i.kind == "missing-split"]
    assert "no train/" in missing.message and "move them into" in missing.message

    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nope")


def test_imbalance_and_shallow_mode(tmp_path):
    root = make_folder(tmp_path / "ds", n=2)
    for i in range(2, 30):
        write_image(root / "train" / "cat" / f"{i}.png")
    (root / "train" / "dog" / "garbage.jpg").write_bytes(b"not an image")
    (root / "train" / "dog" / "zero.jpg").write_bytes(b"")
    deep = check_dataset(root)
    assert deep.imbalance("train") == pytest.approx(30 / 2)
    assert "imbalance" in kinds(deep, "warning") and "corrupt" in kinds(deep, "error")
    shallow = check_dataset(root, deep=False)
    assert kinds(shallow, "error") == ["zero-byte"]  # no decoding without deep
    assert shallow.counts == deep.counts


def test_csv_report(tmp_path):
    lines = ["path,label,split"]
    for cls in CLASSES:
        for i, split in enumerate(["train", "train", "val", "test"]):
            write_image(tmp_path / "img" / f"{cls}{i}.png")
            lines.append(f"img/{cls}{i}.png,{cls},{split}")
    lines.append("img/gone.png,cat,train")
    lines.append("img/cat0.png,cat,validation")
    lines.append("img/cat0.png,cat,test")  # the same file in train and test
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    report = check_dataset(tmp_path / "labels.csv")
    assert report.source == "csv" and report.class_names == list(CLASSES)
    assert report.counts["train"] == {"cat": 2, "dog": 2, "fox": 2}
    assert report.counts["test"] == {"cat": 2, "dog": 1, "fox": 1}
    (missing,) = issue(report, "missing-file")
    assert "line 14" in missing.message and missing.path.endswith("gone.png")
    (bad,) = issue(report, "bad-row")
    assert "line 15" in bad.message and "validation" in bad.message
    (dup,) = issue(report, "duplicate")
    assert dup.severity == "error" and "train and test" in dup.message
    assert not report.ok

    (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
    report = check_dataset(tmp_path / "nohead.csv")
    assert kinds(report) == ["bad-header"] and not report.ok


def test_csv_without_split_reports_fixed_split(tmp_path):
    lines = ["path,label"]
    for cls in CLASSES:
        for i in range(5):
            write_image(tmp_path / f"{cls}{i}.png", mode="L")
            lines.append(f"{cls}{i}.png,{cls}")
    (tmp_path / "l.csv").write_text("\n".join(lines))
    report = check_dataset(tmp_path / "l.csv", source="csv")
    assert {s: sum(c.values()) for s, c in report.counts.items()} == {"train": 9, "val": 3, "test": 3}
    assert report.ok and kinds(report) == ["converted"]
