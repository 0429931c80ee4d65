"""The shared detection evaluator (both detection tasks compose it): COCO mAP, description accuracy, previews."""

from __future__ import annotations

import pytest
import torch

from transferkit.tasks.evaluation import DetectionEvaluator, match_for_description


def test_description_matching_is_greedy_by_score_at_iou_half():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 9.0], [1.0, 0.0, 10.0, 10.0], [20.0, 20.0, 24.0, 24.0]])
    # the higher-scoring second prediction takes GT 0 first; the third overlaps GT 1 with IoU 0.16 only
    pairs = match_for_description(pred, torch.tensor([0.5, 0.9, 0.8]), gt)
    assert pairs == [(1, 0)]
    assert match_for_description(pred[:0], torch.zeros(0), gt) == []


def _gts():
    return [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]]), "labels": torch.tensor([0, 1]),
         "desc": ["red/small", "blue/large"]},
        {"boxes": torch.tensor([[5.0, 5.0, 25.0, 25.0]]), "labels": torch.tensor([1]), "desc": ["blue/small"]},
    ]  # fmt: skip


def test_perfect_detections_score_one_and_descriptions_count_matched_pairs_only():
    ev = DetectionEvaluator(["red", "blue"])
    gts = _gts()
    preds = [
        {"boxes": g["boxes"].clone(), "scores": torch.linspace(0.9, 0.8, len(g["labels"])),
         "labels": g["labels"].clone(), "desc": list(g["desc"])}
        for g in gts
    ]  # fmt: skip
    preds[0]["desc"][1] = "blue/small"  # one wrong description among three matched boxes
    ev.update("val", preds, gts)
    out = ev.compute("val")
    assert out["map"] == pytest.approx(1.0) and out["map_50"] == pytest.approx(1.0)
    assert out["mar_100"] == pytest.approx(1.0)
    assert out["per_class_ap"] == {"red": pytest.approx(1.0), "blue": pytest.approx(1.0)}
    assert out["desc_matched"] == 3 and out["desc_acc"] == pytest.approx(2 / 3)
    # compute resets the split: the next epoch starts empty
    ev.update("val", [{**preds[1], "boxes": torch.tensor([[60.0, 60.0, 70.0, 70.0]])}], [gts[1]])
    again = ev.compute("val")
    assert again["map"] == pytest.approx(0.0) and again["desc_matched"] == 0 and again["desc_acc"] == 0.0


def test_a_missed_object_halves_recall_and_splits_stay_separate():
    ev = DetectionEvaluator(["red", "blue"])
    gts = _gts()[:1]
    preds = [{"boxes": gts[0]["boxes"][:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    ev.update("test", preds, gts)
    ev.update("val", [{**preds[0], "labels": torch.tensor([1])}], gts)  # the wrong class on val
    test, val = ev.compute("test", with_descriptions=False), ev.compute("val", with_descriptions=False)
    assert test["per_class_ap"]["red"] == pytest.approx(1.0) and test["per_class_ap"][
        "blue"
    ] == pytest.approx(0.0)
    assert test["mar_100"] == pytest.approx(0.5) and "desc_acc" not in test
    assert val["map"] == pytest.approx(0.0)


def test_previews_stop_at_the_limit_and_are_drawn_with_notes(tmp_path):
    ev = DetectionEvaluator(["red"], num_previews=2)
    for i in range(3):
        ev.keep_preview(torch.rand(3, 16, 16), torch.tensor([[1.0, 1.0, 8.0, 8.0]]), torch.zeros(0, 4), [],
                        note=f"answer {i}")  # fmt: skip
    assert len(ev.previews) == 2
    paths = ev.save_previews(tmp_path / "predictions", scale=2)
    assert [p.name for p in paths] == ["test_00.png", "test_01.png"] and all(
        p.stat().st_size > 0 for p in paths
    )
    assert "answer 1" in (tmp_path / "predictions" / "answers.txt").read_text() and ev.previews == []


def test_map_equals_faster_coco_evals_cocoeval_run_directly():
    """Our evaluator's numbers are COCOeval's (faster-coco-eval's, run on the same boxes as COCO json) to 1e-6:
    COCO's own IoU and recall thresholds, not float32 linspaces."""
    from faster_coco_eval import COCO, COCOeval_faster

    gen = torch.Generator().manual_seed(0)
    preds, gts, images, annotations, detections = [], [], [], [], []
    for i in range(60):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 80
        wh = torch.rand(n, 2, generator=gen) * 40 + 2
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, 3, (n,), generator=gen)
        jitter = boxes + torch.randn(n, 4, generator=gen) * 3
        extra = torch.rand(2, 4, generator=gen).sort(1).values * 100  # false positives
        p_boxes = torch.cat([jitter, extra[:, [0, 1, 2, 3]]])
        p_boxes = torch.stack([p_boxes[:, 0], p_boxes[:, 1], torch.maximum(p_boxes[:, 2], p_boxes[:, 0] + 1),
                               torch.maximum(p_boxes[:, 3], p_boxes[:, 1] + 1)], 1)  # fmt: skip
        p_labels = torch.cat([labels, torch.randint(0, 3, (2,), generator=gen)])
        scores = torch.rand(len(p_boxes), generator=gen)
        gts.append({"boxes": boxes, "labels": labels})
        preds.append({"boxes": p_boxes, "scores": scores, "labels": p_labels})
        images.append({"id": i + 1, "width": 128, "height": 128, "file_name": f"{i}.png"})
        for b, c in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})  # fmt: skip
        for b, c, s in zip(p_boxes.tolist(), p_labels.tolist(), scores.tolist()):
            detections.append({"image_id": i + 1, "category_id": c + 1, "score": s,
                               "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})  # fmt: skip
    ev = DetectionEvaluator(["a", "b", "c"])
    ev.update("test", preds, gts)
    ours = ev.compute("test", with_descriptions=False)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": n} for c, n in ((1, "a"), (2, "b"), (3, "c"))]}  # fmt: skip
    coco.createIndex()
    run = COCOeval_faster(coco, coco.loadRes(detections), iouType="bbox")
    run.evaluate()
    run.accumulate()
    run.summarize()
    ref = dict(zip(("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"),
                   run.stats[:9]))  # fmt: skip
    for k in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100"):
        assert ours[k] == pytest.approx(float(ref[k]), abs=1e-6), k
    assert 0.05 < ours["map"] < 0.95  # a case with something to get wrong
