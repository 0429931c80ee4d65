"""Detection task: construction, adaptation, a short CPU training run on the shapes set, predict to JSONL."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from transferkit.cli import main
from transferkit.data.grounding import read_grounding_jsonl
from transferkit.errors import UserError
from transferkit.tasks.detection import DetectionTask

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "detection" / "detr_shapes.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
MIN_MAP50 = 0.05
MIN_HITS = 10
TINY_DECODER = dict(hidden_dim=32, num_queries=6, num_layers=2, nhead=4, dim_feedforward=64, dropout=0.0)


def build(**kw) -> DetectionTask:
    args = dict(
        backbone={"name": "vit-micro", "pretrained": False},
        decoder=TINY_DECODER,
        class_names=["a", "b", "c"],
        desc_vocab=["a/1", "b/2"],
        image_size=32,
    )
    task = DetectionTask(**{**args, **kw})
    task.configure_model()
    return task


def test_forward_shapes_and_multilevel_tokens():
    model = build()
    out = model(torch.rand(2, 3, 32, 32))
    assert out["pred_logits"].shape == (2, 6, 4) and out["pred_boxes"].shape == (2, 6, 4)
    assert out["pred_desc_logits"].shape == (2, 6, 2) and len(out["aux_outputs"]) == 1
    conv = build(backbone={"name": "convnet-micro", "pretrained": False}, feature_layers=[1, 2])
    levels, grids = conv._tokens(torch.rand(2, 3, 32, 32))
    assert grids == [(4, 4), (2, 2)] and [t.shape[-1] for t in levels] == [48, 192]
    assert conv(torch.rand(2, 3, 32, 32))["pred_boxes"].shape == (2, 6, 4)
    nodesc = build(loss={"description": False})
    assert "pred_desc_logits" not in nodesc(torch.rand(1, 3, 32, 32))


def test_adaptation_freezes_and_lr_mult_gives_the_backbone_a_tenth():
    frozen = build(adaptation="frozen")
    assert frozen.backbone_frozen and all(p.requires_grad for p in frozen.head.parameters())
    partial = build(freeze_blocks=2)
    groups = partial.backbone.layer_groups()
    named = dict(partial.backbone.named_parameters())
    assert not any(named[n].requires_grad for g in groups[:3] for n in g)
    assert all(named[n].requires_grad for n in groups[3])
    from transferkit.tasks.optim import build_param_groups

    model = build()
    cfg = model.optim_cfg
    assert cfg.name == "adamw" and cfg.lr == 1e-4 and cfg.lr_mult == {"patch_embed": 0.1, "backbone": 0.1}
    groups = build_param_groups(
        model.backbone, model.head, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_mult=cfg.lr_mult
    )
    lrs = {g["component"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-4) and lrs["backbone"] == pytest.approx(1e-5)
    with pytest.raises(UserError, match="unknown loss weight"):
        build(loss={"weights": {"loss_mask": 1.0}})
    with pytest.raises(UserError, match="freeze_blocks"):
        build(adaptation="frozen", freeze_blocks=1)


# a shortened shapes run: 300 images with at most 2 objects, class-agnostic, 8 epochs of batch 8
SHORT_DATA = [
    "--data.shapes.n",
    "300",
    "--data.shapes.max_objects",
    "2",
    "--data.shapes.test_fraction",
    "0.2",
]
SHORT = [
    *SHORT_DATA,
    "--data.label_from", "object",
    "--data.batch_size", "8",
    "--trainer.max_epochs", "8",
    "--model.decoder.num_queries", "4",
]  # fmt: skip
SHORT_MODEL = ["--model.decoder.num_queries", "4"]


@pytest.mark.slow
def test_short_cpu_training_learns_and_predict_writes_grounding_jsonl(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "shapes"
    common = ["--config", CONFIG, "--runs_dir", str(runs), *QUIET, "--data.path", str(data)]
    assert main(["fit", *common, *SHORT, "--name", "short"]) == 0
    run = runs / "short"
    m = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {"map", "map_50", "map_75", "mar_100", "desc_acc", "per_class_ap"} <= set(m[split])
    print("short run, test:", {k: round(v, 3) for k, v in m["test"].items() if isinstance(v, float)})
    # an untrained detector scores ~0.001 here
    assert m["test"]["map_50"] > MIN_MAP50, m["test"]
    assert m["test"]["desc_matched"] > 0
    rows = list(csv.DictReader((run / "log" / "version_0" / "metrics.csv").open()))
    epoch_loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_loss) == 8 and epoch_loss[-1] < 0.8 * epoch_loss[0], epoch_loss
    assert len(list((run / "predictions").glob("test_*.png"))) == 8

    # predict with the default (12-class) labels: the checkpoint's own class list must win
    assert (
        main(
            [
                "predict",
                *common,
                *SHORT_DATA,
                *SHORT_MODEL,
                "--ckpt_path",
                str(run / "checkpoints" / "best.ckpt"),
            ]
        )
        == 0
    )
    preds, errors = read_grounding_jsonl(run / "predictions.jsonl")
    truth, _ = read_grounding_jsonl(data / "test.jsonl")
    assert errors == [] and len(preds) == len(truth) == 60
    hits = 0
    for p, t in zip(preds, truth):
        assert Path(p.image).name == Path(t.image).name and (p.width, p.height) == (t.width, t.height)
        for obj in p.objects:
            assert obj.extra["score"] >= 0.5 and obj.extra["category"] == "object"
            x1, y1, x2, y2 = obj.bbox
            assert -1 <= x1 <= x2 <= t.width + 1 and -1 <= y1 <= y2 <= t.height + 1
        if p.objects:  # boxes are in the original image's pixels: the best one overlaps a true object
            gt = torch.tensor([o.bbox for o in t.objects], dtype=torch.float32)
            hits += int(box_iou(torch.tensor([p.objects[0].bbox]), gt).max() >= 0.5)
    assert hits >= MIN_HITS, hits
