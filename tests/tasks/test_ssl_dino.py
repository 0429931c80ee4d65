"""DINO continuation: the reference's pieces (loss, head, schedules, EMA) and a small run from the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transferkit.backbones import build_backbone
from transferkit.cli import main
from transferkit.tasks.ssl_dino import (
    DinoContinuation,
    DINOHead,
    DinoHeadOptions,
    DINOLoss,
    DinoLossOptions,
    cosine_schedule,
    teacher_temperature,
)

ROOT = Path(__file__).resolve().parents[2]
DINO = str(ROOT / "configs" / "ssl" / "dino_continue.yaml")


def test_schedules_follow_the_reference():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(5, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)  # linear warmup from 0
    opts = DinoLossOptions(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    assert [round(teacher_temperature(e, opts), 4) for e in range(6)] == [0.04, 0.05, 0.06, 0.07, 0.07, 0.07]


def test_dino_loss_matches_the_formula_and_updates_the_center():
    torch.manual_seed(0)
    b, k, crops = 4, 16, 4
    student, teacher = torch.randn(crops * b, k), torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, crops, DinoLossOptions(student_temp=0.1, center_momentum=0.9))
    loss_fn.center.fill_(0.3)
    center = loss_fn.center.clone()
    loss = loss_fn(student, teacher, teacher_temp=0.04)
    q = F.softmax((teacher - center) / 0.04, -1).chunk(2)
    s = F.log_softmax(student / 0.1, -1).chunk(crops)
    terms = [(-q[i] * s[v]).sum(-1).mean() for i in range(2) for v in range(crops) if v != i]
    assert loss == pytest.approx(float(sum(terms) / len(terms)), rel=1e-5)
    torch.testing.assert_close(loss_fn.center, center * 0.9 + teacher.mean(0, keepdim=True) * 0.1)


def test_head_normalises_and_fixes_the_prototype_norm():
    head = DINOHead(32, DinoHeadOptions(out_dim=50, hidden_dim=64, bottleneck_dim=8, nlayers=3))
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 50) and float(out.abs().max()) <= 1.0 + 1e-5  # cosine similarities
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    assert DINOHead(
        32, DinoHeadOptions(out_dim=10, nlayers=1, norm_last_layer=False)
    ).last_layer.parametrizations.weight.original0.requires_grad


def test_teacher_is_an_ema_of_the_student():
    model = DinoContinuation(
        backbone={"name": "vit-micro"},
        head={"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8},
        image_size=32,
        crop_sizes=[32, 32],
    )
    model.configure_model()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.9)
    for t0, t1, s in zip(before, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    out = model([torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)])
    assert out.shape == (4, 32)


def read_epoch_losses(run: Path) -> list[float]:
    rows = csv.DictReader(open(run / "log" / "version_0" / "metrics.csv"))
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


@pytest.mark.slow
def test_dino_run_lowers_the_loss_and_saves_a_loadable_backbone(tmp_path):
    args = [
        "fit",
        "--config",
        DINO,
        "--runs_dir",
        str(tmp_path / "runs"),
        "--name",
        "dino",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.backbone.name",
        "vit-micro",
        "--data.image_size",
        "32",
        "--data.local_crop_size",
        "16",
        "--data.num_local_crops",
        "2",
        "--data.batch_size",
        "64",
        "--trainer.max_epochs",
        "4",
        "--trainer.limit_train_batches",
        "8",
        "--model.head.out_dim",
        "256",
        "--model.head.hidden_dim",
        "256",
        "--model.head.bottleneck_dim",
        "64",
        "--model.optimizer.blr",
        "5e-3",
        "--model.optimizer.warmup_epochs",
        "1",
        "--model.loss.warmup_teacher_temp_epochs",
        "0",
        "--model.loss.teacher_temp",
        "0.04",
        "--model.freeze_last_layer",
        "0",
        "--model.momentum_teacher",
        "0.996",
    ]
    assert main(args) == 0
    run = tmp_path / "runs" / "dino"
    losses = read_epoch_losses(run)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["loss"] == pytest.approx(losses[-1], rel=1e-4)
    assert metrics["ssl"]["method"] == "dino" and metrics["saved_backbone"] == str(run / "backbone")
    assert (run / "checkpoints" / "best.ckpt").is_file() and not (run / "evaluation").exists()

    # the continued backbone loads back as a backbone, equal to the run's teacher
    loaded = build_backbone(str(run / "backbone"), image_size=32).eval()
    model = DinoContinuation.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.teacher.backbone.eval()(x))
        start = build_backbone("vit-micro", image_size=32).eval()
        assert not torch.allclose(loaded(x), start(x))
    # and every classification config accepts it
    lp = str(ROOT / "configs" / "classification" / "linear_probe.yaml")
    assert (
        main(
            [
                "fit",
                "--config",
                lp,
                "--model.backbone.name",
                str(run / "backbone"),
                "--data.image_size",
                "32",
                "--validate_only",
                "true",
            ]
        )
        == 0
    )


def test_validate_only_runs_student_and_teacher_on_one_batch(tmp_path, capsys):
    args = [
        "fit",
        "--config",
        DINO,
        "--model.backbone.name",
        "vit-micro",
        "--data.image_size",
        "32",
        "--data.local_crop_size",
        "16",
        "--runs_dir",
        str(tmp_path),
        "--validate_only",
        "true",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "student_output" in out and "teacher_output" in out and "DinoContinuation" in out
    assert not any(tmp_path.iterdir())


def test_collapse_check_names_both_collapse_modes():
    import math

    from transferkit.tasks.ssl_dino import collapse_check

    k = 4096
    healthy = collapse_check([(0.5 * math.log(k), 0.9 * math.log(k))] * 3, k)
    assert healthy["warning"] is None and healthy["log_k"] == pytest.approx(math.log(k))
    uniform = collapse_check([(0.9 * math.log(k), math.log(k))], k)
    assert "approach uniform" in uniform["warning"] and uniform["teacher_entropy"] == pytest.approx(
        0.9 * math.log(k)
    )
    one = collapse_check([(0.01, 0.05)], k)
    assert "same few prototypes" in one["warning"]
    assert collapse_check([], k)["warning"] is None
