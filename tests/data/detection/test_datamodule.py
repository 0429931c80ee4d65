import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data.detection import DetectionDataModule, ShapesConfig
from transferkit.data.detection.datamodule import build_detection_transform
from transferkit.data.grounding import boxes_from_model, read_grounding_jsonl
from transferkit.errors import DatasetError

# (width, height, [x1, y1, x2, y2]): non-square images, so the resize scales x and y differently
BOXES = [(96, 80, [12, 30, 40, 61]), (70, 100, [35, 10, 69, 50]), (64, 64, [0, 0, 16, 8])]


def white_box_dataset(root, split="train", extra_lines=()):
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h, box) in enumerate(BOXES):
        pixels = np.zeros((h, w, 3), dtype=np.uint8)
        x1, y1, x2, y2 = box
        pixels[y1:y2, x1:x2] = 255
        Image.fromarray(pixels).save(root / f"{split}{i}.png")
        obj = {"bbox_2d": box, "desc": f"white box/{i}"}
        lines.append(json.dumps({"images": [f"{split}{i}.png"], "width": w, "height": h, "objects": [obj]}))
    (root / f"{split}.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    return root


def white_extent(image: torch.Tensor) -> list[float]:
    """Continuous xyxy extent of the pixels brighter than half in a (3, H, W) image."""
    ys, xs = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_a_box_survives_the_resize_round_trip(tmp_path):
    root = white_box_dataset(tmp_path / "d")
    dm = DetectionDataModule(source="grounding", path=str(root), image_size=32, val_fraction=0.34)
    records, _ = read_grounding_jsonl(root / "train.jsonl")
    by_name = {r.image: r for r in records}
    for split in ("train", "val"):
        ds = dm.dataset(split)
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            rec = by_name[target["image"].rsplit("/", 1)[-1]]
            assert target["orig_size"].tolist() == [rec.height, rec.width]
            # model side: normalised cxcywh; back in the original image's pixels: the file's box
            back = boxes_from_model(target["boxes"].double(), target["orig_size"].tolist())
            torch.testing.assert_close(
                back[0], torch.tensor(rec.objects[0].bbox, dtype=torch.float64), atol=1e-4, rtol=0
            )
            # and the normalised box still frames the white pixels of the resized image (1 px of blur)
            model_box = boxes_from_model(target["boxes"], (32, 32))[0].tolist()
            assert np.allclose(model_box, white_extent(image), atol=1.0), (model_box, white_extent(image))


@pytest.mark.parametrize("augment", ["hflip", "basic"])
def test_augmentations_move_boxes_with_the_pixels(tmp_path, augment):
    root = white_box_dataset(tmp_path / "d")
    records, _ = read_grounding_jsonl(root / "train.jsonl")
    dm = DetectionDataModule(
        source="grounding", path=str(root), image_size=32, augment=augment, val_fraction=0.34
    )
    ds = dm._make_dataset(records, root, train=True)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(6):
        for i in range(len(ds)):
            image, target = ds[i]
            if len(target["boxes"]) == 0:  # basic's affine may push a box out; its label goes with it
                assert len(target["labels"]) == len(target["desc"]) == 0
                continue
            box = boxes_from_model(target["boxes"], (32, 32))[0].tolist()
            assert np.allclose(box, white_extent(image), atol=1.5), (augment, box, white_extent(image))
            x_plain = records[i].objects[0].bbox[0] * 32 / records[i].width
            flipped += abs(box[0] - x_plain) > 2
    assert flipped > 0  # some samples were actually transformed


def test_eval_transform_is_deterministic_and_never_drops_boxes():
    t = build_detection_transform(16, train=False)
    assert not any("Sanitize" in type(op).__name__ or "Random" in type(op).__name__ for op in t.transforms)


def test_held_out_val_test_falls_back_and_malformed_lines_are_skipped(tmp_path):
    root = white_box_dataset(
        tmp_path / "d", extra_lines=['{"images": ["x.png"], "objects": [{"bbox_2d": [1]}]}']
    )
    dm = DetectionDataModule(source="auto", path=str(root), image_size=16, batch_size=2, val_fraction=0.34)
    info = dm.describe()
    assert info["splits"]["train"]["images"] == 2 and info["splits"]["val"]["images"] == 1
    assert info["test_is_val"] and info["class_names"] == ["white box"]
    assert len(dm.errors) == 1 and dm.errors[0].line == 4 and "train.jsonl:4" in info["skipped_records"][0]
    assert len(dm.desc_vocab) == 2  # descriptions of the training split only
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and len(targets) == 2
    assert set(targets[0]) == {"boxes", "labels", "desc", "orig_size", "index", "image"}
    val_target = dm.dataset("val")[0][1]
    assert val_target["desc"].tolist() == [-100]  # a description never seen in training is ignored
    with pytest.raises(DatasetError, match="strict"):
        DetectionDataModule(source="auto", path=str(root), on_corrupt="error").describe()


def test_shapes_source_generates_once_and_predicts_on_a_folder(tmp_path):
    dm = DetectionDataModule(
        source="shapes", path=str(tmp_path / "s"), image_size=32, shapes=ShapesConfig(n=30)
    )
    dm.prepare_data()
    assert (tmp_path / "s" / "shapes.json").is_file()
    assert dm.num_classes == len(dm.class_names) and 1 <= dm.num_classes <= 12
    assert dm.describe()["splits"]["test"]["images"] == 3
    dm2 = DetectionDataModule(
        source="shapes",
        path=str(tmp_path / "s"),
        shapes=ShapesConfig(n=30),
        predict_path=str(tmp_path / "s" / "images"),
    )
    ds = dm2.predict_dataset()
    assert len(ds) == 30 and len(ds[0][1]["boxes"]) == 0


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        DetectionDataModule(source="grounding", path=str(tmp_path / "nope")).describe()
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match="no training annotations"):
        DetectionDataModule(source="grounding", path=str(tmp_path / "e")).describe()


def test_cache_keeps_deterministic_items_only(tmp_path):
    root = white_box_dataset(tmp_path / "d")
    dm = DetectionDataModule(source="grounding", path=str(root), image_size=16, cache=True, val_fraction=0.34)
    ds = dm.dataset("train")
    augmenting = DetectionDataModule(
        source="grounding", path=str(root), cache=True, augment="hflip", val_fraction=0.34
    )
    assert augmenting.dataset("train", train_transform=True).cache is None
    first = ds[0]
    (root / "train0.png").unlink()  # served from memory from now on
    (root / "train1.png").unlink()
    again = ds[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert len(ds.cache) == 1


def test_coco_training_reports_every_dropped_annotation_and_can_fail_instead(tmp_path, caplog):
    root = tmp_path / "coco"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20)).save(root / f"{i}.png")
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": 20, "height": 20} for i in range(3)],
        "categories": [{"id": 1, "name": "box"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [2, 2, 5, 5]},  # unknown category
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [2, 2, -5, 5]},  # negative width
            {"id": 4, "image_id": 9, "category_id": 1, "bbox": [2, 2, 5, 5]},  # unknown image
            {
                "id": 5,
                "image_id": 3,
                "category_id": 1,
                "bbox": [15, 15, 10, 10],
            },  # outside the image: clamped
        ],
    }
    (root / "train.json").write_text(json.dumps(coco))
    dm = DetectionDataModule(source="coco", path=str(root), image_size=16, val_fraction=0.34)
    dm.setup("fit")
    said = caplog.text
    assert "skipped 3 record(s)" in said and "annotations[1]" in said and "annotations[2]" in said
    assert "annotations[3]" in said and "fixed 1 box(es)" in said and "clamped to [15, 15, 20, 20]" in said
    with pytest.raises(DatasetError, match=r"annotations\[1\].*category_id 7"):
        DetectionDataModule(source="coco", path=str(root), on_corrupt="error").setup("fit")
