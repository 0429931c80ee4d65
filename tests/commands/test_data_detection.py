import json

from transferkit.cli import main as cli_main
from transferkit.data.grounding import read_grounding_jsonl


def main(argv: list[str]) -> int:
    return cli_main(["data", *argv])


def test_make_shapes_then_convert_round_trip(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-shapes", str(out), "--n", "12", "--max_objects", "3", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "train.jsonl" in printed and "descriptions" in printed
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "shapes.json"):
        assert (out / f).is_file()
    assert len(list((out / "images").glob("*.png"))) == 12

    coco = tmp_path / "train.json"
    assert main(["convert", str(out / "train.jsonl"), str(coco)]) == 0
    data = json.loads(coco.read_text())
    assert len(data["images"]) == 10 and data["categories"] and data["annotations"][0]["bbox"]
    back = tmp_path / "back.jsonl"
    assert main(["convert", str(coco), str(back)]) == 0
    original = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert [json.loads(x) for x in back.read_text().splitlines()] == original
    assert "OK: wrote 10 images" in capsys.readouterr().out


def test_convert_reports_malformed_lines_and_keeps_the_rest(tmp_path, capsys):
    lines = [
        {"images": ["a.png"], "width": 10, "height": 10, "objects": [{"bbox_2d": [1, 1, 5, 5], "desc": "x"}]},
        "{broken",
        {"images": ["b.png"], "width": 10, "height": 10, "objects": [{"bbox_2d": [5, 5, 1, 1], "desc": "y"}]},
        {"images": ["c.png"], "width": 10, "height": 10, "objects": []},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    dst = tmp_path / "out.json"
    assert main(["convert", str(src), str(dst)]) == 1
    out = capsys.readouterr().out
    assert "in.jsonl:2:" in out and "in.jsonl:3:" in out and "2 record(s) skipped" in out
    coco = json.loads(dst.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "c.png"]
    # strict mode stops at the first malformed line, naming it
    assert cli_main(["data", "convert", str(src), str(tmp_path / "s.json"), "--strict", "true"]) == 2
    assert "in.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_convert_usage_errors(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text("")
    assert cli_main(["data", "convert", str(src), str(tmp_path / "b.jsonl")]) == 2
    assert "one .jsonl" in capsys.readouterr().err
    assert cli_main(["data", "convert", str(tmp_path / "none.jsonl"), str(tmp_path / "b.json")]) == 2
    assert main(["convert", "--help"]) == 0
    records, errors = read_grounding_jsonl(src)
    assert records == [] and errors == []
