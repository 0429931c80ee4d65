import copy
import json

from transferkit.data.detection.coco import coco_to_records, read_coco, records_to_coco
from transferkit.data.grounding import parse_record, read_grounding_jsonl, write_grounding_jsonl

COCO = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 96, "height": 80},
        {"id": 7, "file_name": "b.png", "width": 64, "height": 64, "coco_url": "http://x/b.png"},
        {"id": 3, "file_name": "empty.png", "width": 50, "height": 40},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 15], "area": 450, "iscrowd": 0},
        {
            "id": 2,
            "image_id": 7,
            "category_id": 5,
            "bbox": [1.5, 2.25, 10.5, 8.0],
            "area": 84.0,
            "iscrowd": 0,
            "desc": "cat/sleeping",
        },
        {
            "id": 10,
            "image_id": 1,
            "category_id": 5,
            "bbox": [0, 0, 5, 5],
            "area": 20.0,
            "iscrowd": 1,
            "segmentation": [[0, 0, 5, 0, 5, 5]],
        },
    ],
    "categories": [
        {"id": 2, "name": "dog", "supercategory": "animal"},
        {"id": 5, "name": "cat", "supercategory": "animal"},
    ],
}


def by_id(items):
    return sorted(items, key=lambda x: x["id"])


def test_coco_to_jsonl_to_coco_is_lossless():
    records, errors, notes = coco_to_records(copy.deepcopy(COCO))
    assert errors == [] and notes == []
    assert [r.image for r in records] == ["a.png", "b.png", "empty.png"]
    a = records[0]
    assert a.size == (80, 96) and a.objects[0].bbox == (10, 20, 40, 35) and a.objects[0].desc == "dog"
    assert records[1].objects[0].desc == "cat/sleeping" and records[2].objects == []
    back, errors = records_to_coco(records)
    assert errors == []
    assert back["images"] == COCO["images"]
    assert by_id(back["categories"]) == by_id(COCO["categories"])
    assert by_id(back["annotations"]) == by_id(COCO["annotations"])


def test_jsonl_to_coco_to_jsonl_is_lossless(tmp_path):
    lines = [
        {
            "images": ["a.png"],
            "width": 96,
            "height": 80,
            "objects": [
                {"bbox_2d": [12, 30, 40, 61], "desc": "red circle/large/occluded"},
                {"bbox_2d": [0.5, 1.25, 8.75, 9.5], "desc": "blue square/small/visible", "note": "x"},
            ],
        },
        {
            "teachers": [{"model": "t1"}],
            "student": {"images": ["b.png"], "width": 10, "height": 12, "objects": []},
        },
        {
            "images": ["c.png"],
            "width": 30,
            "height": 30,
            "source": "cam",
            "objects": [
                {"bbox_2d": [1, 1, 2, 2], "desc": "a thing", "category": "widget"},
                {"bbox_2d": [3, 3, 9, 9], "desc": "red circle/small/visible"},
            ],
        },
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records, _ = read_grounding_jsonl(src)
    coco, errors = records_to_coco(records)
    assert errors == []
    assert [c["name"] for c in coco["categories"]] == ["red circle", "blue square", "widget"]
    assert coco["annotations"][0]["bbox"] == [12, 30, 28, 31] and coco["annotations"][0]["area"] == 28 * 31
    (tmp_path / "mid.json").write_text(json.dumps(coco))
    again, errors, notes = read_coco(tmp_path / "mid.json")
    assert errors == [] and notes == []
    out = write_grounding_jsonl(tmp_path / "out.jsonl", again)
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines  # equal JSON (key order aside)


def test_bad_annotations_are_reported_and_the_rest_kept():
    coco = copy.deepcopy(COCO)
    coco["annotations"] += [
        {"id": 11, "image_id": 99, "category_id": 2, "bbox": [0, 0, 1, 1]},
        {"id": 12, "image_id": 1, "category_id": 2, "bbox": [0, 0, -1, 1]},
        {"id": 13, "image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1]},
    ]
    coco["info"] = {"year": 2024}
    coco["categories"].append({"id": 9, "name": "unused"})
    records, errors, notes = coco_to_records(coco, "x.json")
    assert sum(len(r.objects) for r in records) == 3
    assert [str(e).split(":")[1].strip() for e in errors] == [
        "annotations[3]",
        "annotations[4]",
        "annotations[5]",
    ]
    assert "image_id 99" in str(errors[0]) and "category_id 42" in str(errors[2])
    assert any("info" in n for n in notes) and any("unused" in n for n in notes)


def test_records_without_size_read_it_or_are_reported():
    rec = parse_record({"images": ["a.png"], "objects": [{"bbox_2d": [0, 0, 1, 1], "desc": "x"}]}, line=3)
    coco, errors = records_to_coco([rec], size_of=lambda r: (40, 50))
    assert coco["images"][0]["width"] == 50 and coco["images"][0]["height"] == 40
    coco, errors = records_to_coco([rec])
    assert coco["images"] == [] and errors[0].line == 3 and "width" in errors[0].message
