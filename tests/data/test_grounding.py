import json

import pytest
import torch

from transferkit.data.grounding import (
    boxes_from_model,
    boxes_to_model,
    desc_head,
    read_grounding_jsonl,
    rescale_boxes,
    write_grounding_jsonl,
)
from transferkit.errors import DatasetError

GOOD = {
    "images": ["img/a.png"],
    "width": 96,
    "height": 80,
    "objects": [
        {"bbox_2d": [12, 30, 40, 61], "desc": "red circle/large/occluded"},
        {
            "bbox_2d": [0.5, 1.25, 8.75, 9.0],
            "desc": "blue square/small/visible",
            "category": "square",
            "id": 7,
        },
    ],
    "source": "cam-3",
}
TEACHER = {
    "teachers": [{"model": "t1", "objects": []}],
    "student": {"images": ["img/b.png"], "objects": [{"bbox_2d": [1, 2, 3, 4], "desc": "yellow triangle"}]},
}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_write_round_trip_is_byte_identical(tmp_path):
    src = write_lines(
        tmp_path / "a.jsonl", [json.dumps(GOOD), json.dumps(TEACHER), json.dumps({**GOOD, "objects": []})]
    )
    records, errors = read_grounding_jsonl(src)
    assert errors == [] and len(records) == 3
    a, b, c = records
    assert a.image == "img/a.png" and a.size == (80, 96) and a.line == 1
    assert a.objects[0].bbox == (12, 30, 40, 61) and a.objects[0].category == "red circle"
    assert a.objects[1].category == "square" and a.objects[1].extra == {"category": "square", "id": 7}
    assert a.extra == {"source": "cam-3"}
    # the student part is the target; the teachers are kept
    assert b.envelope == {"teachers": TEACHER["teachers"]} and b.objects[0].desc == "yellow triangle"
    assert b.size is None and c.objects == []
    out = write_grounding_jsonl(tmp_path / "b.jsonl", records)
    assert out.read_text() == src.read_text()


def test_malformed_lines_are_reported_with_line_numbers_and_the_rest_kept(tmp_path):
    lines = [
        json.dumps(GOOD),  # 1
        "{not json",  # 2
        "",  # 3 blank: skipped silently
        json.dumps(
            {"images": ["x.png"], "objects": [{"bbox_2d": [10, 10, 5, 20], "desc": "a"}]}
        ),  # 4 inverted
        json.dumps(
            {"images": ["x.png"], "objects": [{"bbox_2d": [1, 2, 3], "desc": "a"}]}
        ),  # 5 three numbers
        json.dumps({"images": "x.png", "objects": []}),  # 6 images not a list
        json.dumps({"images": ["x.png"], "objects": [{"bbox_2d": [1, 2, 3, 4]}]}),  # 7 no desc
        json.dumps([1, 2]),  # 8 not an object
        json.dumps(TEACHER),  # 9
        json.dumps({"images": ["y.png"], "width": -3, "objects": []}),  # 10 bad width
    ]
    src = write_lines(tmp_path / "bad.jsonl", lines)
    records, errors = read_grounding_jsonl(src)
    assert [r.line for r in records] == [1, 9]
    assert [e.line for e in errors] == [2, 4, 5, 6, 7, 8, 10]
    messages = {e.line: e.message for e in errors}
    assert "x2 < x1" in messages[4]
    assert "4 finite numbers" in messages[5]
    assert "list of paths" in messages[6]
    assert "'desc'" in messages[7]
    assert f"{src}:4:" in str(errors[1])
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: "):
        read_grounding_jsonl(src, strict=True)


def test_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_grounding_jsonl(tmp_path / "nope.jsonl")


def test_box_conventions_round_trip():
    boxes = torch.tensor([[12.0, 30.0, 40.0, 61.0], [0.0, 0.0, 96.0, 80.0]], dtype=torch.float64)
    size = (80, 96)  # (H, W)
    norm = boxes_to_model(boxes, size)
    torch.testing.assert_close(norm[1], torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        norm[0], torch.tensor([26 / 96, 45.5 / 80, 28 / 96, 31 / 80], dtype=torch.float64)
    )
    torch.testing.assert_close(boxes_from_model(norm, size), boxes)
    # batched sizes (B, 2) with boxes (B, Q, 4)
    batched = boxes_from_model(norm[None].expand(2, -1, -1), torch.tensor([[80, 96], [40, 48]]))
    torch.testing.assert_close(batched[1], boxes / 2)
    # resizing the image moves the box; resizing back restores it
    small = rescale_boxes(boxes, size, (64, 64))
    torch.testing.assert_close(small[0], torch.tensor([8.0, 24.0, 80 / 3, 48.8], dtype=torch.float64))
    torch.testing.assert_close(rescale_boxes(small, (64, 64), size), boxes)


def test_desc_head():
    assert desc_head("red circle/large/occluded") == "red circle"
    assert desc_head("a dog") == "a dog"
