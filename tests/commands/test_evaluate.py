"""``transferkit evaluate`` end to end on a tiny digits run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from transferkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
FT = str(ROOT / "configs" / "classification" / "finetune.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    args = [
        "fit",
        "--config",
        FT,
        "--runs_dir",
        str(runs),
        "--name",
        "tiny",
        *QUIET,
        "--model.backbone.name",
        "vit-micro",
        "--data.image_size",
        "32",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
    ]
    assert main(args) == 0
    return runs / "tiny"


@pytest.mark.slow
def test_evaluate_writes_metrics_plots_and_report(tiny_run, capsys):
    args = ["evaluate", "--run", str(tiny_run), "--max_images", "40", "--severities", "[1, 5]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "accuracy under corruption" in out and "balanced_accuracy" in out
    ev = tiny_run / "evaluation"
    for f in (
        "metrics_test.json",
        "predictions_test.npz",
        "confusion_matrix.png",
        "roc_curves.png",
        "pr_curves.png",
        "reliability.png",
        "robustness.png",
        "corruption_examples.png",
    ):
        assert (ev / f).is_file() and (ev / f).stat().st_size > 0, f
    result = json.loads((ev / "metrics_test.json").read_text())
    # the run's own files: metrics.json gains an evaluation section, config.evaluate.yaml re-runs it
    summary = json.loads((tiny_run / "metrics.json").read_text())["evaluation"]["test"]
    assert summary["accuracy"] == result["metrics"]["accuracy"] and summary["checkpoint"] == "best.ckpt"
    assert summary["robustness"]["clean"] == result["robustness"]["clean"]
    assert (tiny_run / "config.yaml").is_file()
    assert yaml.safe_load((tiny_run / "config.evaluate.yaml").read_text())["severities"] == [1, 5]
    cached = np.load(ev / "predictions_test.npz")
    y, logits = cached["labels"], cached["logits"]
    assert len(y) == 360  # the whole digits test split
    pred = logits.argmax(1)
    m = result["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert np.array_equal(
        np.array(result["confusion_matrix"]), skm.confusion_matrix(y, pred, labels=range(10))
    )
    assert len(result["per_class"]) == 10 and sum(r["support"] for r in result["per_class"]) == 360
    rob = result["robustness"]
    assert set(rob["accuracy"]) == {
        "gaussian_noise",
        "gaussian_blur",
        "jpeg",
        "brightness",
        "contrast",
        "pixelate",
    }
    assert set(rob["mean_per_severity"]) == {"1", "5"} and rob["num_images"] == 40
    report = (tiny_run / "report.md").read_text()
    assert "## Evaluation on test" in report and "evaluation/confusion_matrix.png" in report
    assert "<img" in (tiny_run / "report.html").read_text()

    # a second evaluation re-uses the cached logits and replaces (not duplicates) its report section
    mtime = (ev / "predictions_test.npz").stat().st_mtime_ns
    assert main(["evaluate", "--run", str(tiny_run), "--corruptions", "none"]) == 0
    assert (ev / "predictions_test.npz").stat().st_mtime_ns == mtime
    assert (tiny_run / "report.md").read_text().count("## Evaluation on test") == 1
    assert "robustness" not in json.loads((ev / "metrics_test.json").read_text())


def test_evaluate_rejects_what_it_cannot_evaluate(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "no run directory" in capsys.readouterr().err
    run = tmp_path / "ssl"
    run.mkdir()
    config = {
        "model": {"class_path": "transferkit.tasks.ssl_dino.DinoContinuation"},
        "data": {"class_path": "transferkit.data.unlabeled.UnlabeledImageDataModule"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "fit a linear probe on it" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--corruptions", "fog"]) == 2
    assert "unknown corruption" in capsys.readouterr().err
