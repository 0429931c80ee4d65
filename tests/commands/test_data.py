import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.cli import main as cli_main


def main(argv: list[str]) -> int:
    return cli_main(["data", *argv])


CLASSES = ("cat", "dog")


def make_folder(root: Path, n: int = 3) -> Path:
    for split in ("train", "val", "test"):
        for cls in CLASSES:
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                rng = np.random.default_rng(zlib.crc32(str(path).encode()))
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
    return root


def test_check_good_dataset_exits_0(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "cat" in out and "dog" in out and "imbalance" in out
    assert "OK: 0 error(s), 0 warning(s)" in out


def test_check_broken_dataset_exits_1_and_writes_json(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    (root / "val" / "dog" / "1.png").write_bytes(b"")
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"garbage")
    report_path = tmp_path / "out" / "report.json"
    assert main(["check", str(root), "--json", str(report_path)]) == 1
    out = capsys.readouterr().out
    assert "zero-byte" in out and "corrupt" in out and "bad.jpg" in out and "FAILED: 2 error(s)" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert sorted(i["kind"] for i in report["issues"]) == ["corrupt", "zero-byte"]
    assert report["counts"]["val"] == {"cat": 3, "dog": 3}


def test_check_csv_and_usage_errors(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    rows = ["path,label"] + [f"ds/train/{c}/{i}.png,{c}" for c in CLASSES for i in range(3)]
    (tmp_path / "l.csv").write_text("\n".join(rows * 1) + "\nds/val/cat/0.png,cat\nds/val/dog/0.png,dog\n")
    assert main(["check", str(tmp_path / "l.csv"), "--source", "csv", "--deep", "false"]) == 0
    assert main(["check", str(root), "--source", "coco"]) == 2
    assert main(["check", "--help"]) == 0
    assert "--json" in capsys.readouterr().out
    assert main([]) == 2


def test_check_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
