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
