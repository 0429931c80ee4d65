import json

import pytest
from PIL import Image

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
    assert main(["convert", str(out / "train.jsonl"), str(coco)]) == 0  # images relative to the .jsonl
    data = json.loads(coco.read_text())
    assert len(data["images"]) == 10 and data["categories"] and data["annotations"][0]["bbox"]
    back = tmp_path / "back.jsonl"
    assert main(["convert", str(coco), str(back), "--image_root", str(out)]) == 0  # images are under out/
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
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (10, 10)).save(tmp_path / name)
    dst = tmp_path / "out.json"
    assert main(["convert", str(src), str(dst)]) == 1
    out = capsys.readouterr().out
    assert "in.jsonl:2:" in out and "in.jsonl:3:" in out and "2 record(s) skipped" in out
    coco = json.loads(dst.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "c.png"]
    # strict mode stops at the first malformed line, naming it
    assert cli_main(["data", "convert", str(src), str(tmp_path / "s.json"), "--on_corrupt", "error"]) == 2
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


def _record(image, objects, **size):
    return {"images": [image], **size, "objects": [{"bbox_2d": b, "desc": "red circle"} for b in objects]}


# one row per bad input of `data convert`: what the line is, and what the report must say (exit status)
BAD_INPUTS = {
    "box outside the image": (_record("ok.png", [[10, 10, 40, 25]]), "clamped to [10, 10, 32, 24]", 0),
    "negative coordinates": (_record("ok.png", [[-5, -2, 8, 8]]), "clamped to [0, 0, 8, 8]", 0),
    "zero-area box": (_record("ok.png", [[4, 4, 4, 9]]), "no area inside the 32x24 image: dropped", 0),
    "missing image with its size given": (_record("gone.png", [], width=32, height=24), "does not exist", 1),
    "a text file named .png": (_record("text.png", []), "is not a readable image", 1),
    "a path leaving the dataset folder": (_record("../../../../etc/passwd", []), "leaves the dataset folder", 1),
    "a width that is not the image's": (_record("ok.png", [], width=99, height=24), "differ from the image's 32x24", 0),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_convert_lists_every_bad_input_with_its_line_and_policy(case, tmp_path, capsys):
    line, says, code = BAD_INPUTS[case]
    Image.new("RGB", (32, 24), "white").save(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not an image")
    good = _record("ok.png", [[1, 1, 8, 8]])
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "out.json")]) == code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    listed = [x for x in out.out.splitlines() if "in.jsonl:2:" in x]
    assert listed and says in listed[0], out.out
    coco = json.loads((tmp_path / "out.json").read_text())
    assert len(coco["images"]) == (2 if code == 0 else 1)


def test_bad_encodings_and_a_coco_file_without_categories_are_one_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(_record("ok.png", [])).encode() + b"\n" + b'{"images": ["\xff.png"]}\n')
    assert main(["convert", str(src), str(tmp_path / "out.json")]) == 1
    assert "in.jsonl:2: not UTF-8 text (byte 0xff" in capsys.readouterr().out
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "ok.png"}], "annotations": []}))
    assert main(["convert", str(coco), str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err
    assert (
        "needs a 'categories' list" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    )
    coco.write_bytes(b'{"images": [], "categories": [{"id": 1, "name": "\xff"}]}')
    assert main(["convert", str(coco), str(tmp_path / "c.jsonl")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
