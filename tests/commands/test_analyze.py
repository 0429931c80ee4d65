"""``transferkit analyze <what>`` end to end on a tiny digits run started from a saved backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.backbones import BackboneConfig, build_backbone
from transferkit.backbones.saved import save_backbone
from transferkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
FT = str(ROOT / "configs" / "classification" / "finetune.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 3-step fine-tune of vit-micro whose start is a saved backbone, so weight changes are exact."""
    root = tmp_path_factory.mktemp("analyze")
    torch.manual_seed(0)
    start = save_backbone(
        build_backbone("vit-micro", image_size=32),
        BackboneConfig(name="vit-micro"),
        root / "start",
        image_size=32,
    )
    args = [
        "fit",
        "--config",
        FT,
        "--runs_dir",
        str(root / "runs"),
        "--name",
        "tiny",
        *QUIET,
        "--model.backbone.name",
        str(start),
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
    return root / "runs" / "tiny"


FILES = {
    "features": ["embeddings.png", "features.json"],
    "weights": ["weights.png", "spectra.png", "weights.json"],
    "activations": ["stats.png", "class_heatmaps.png", "activations.json"],
    "attention": ["attention_maps.png", "attention_distance.png", "attention.json"],
    "landscape": ["landscape_1d.png", "landscape_2d.png", "landscape.json"],
}
FAST = {
    "features": ["--num_images", "100"],
    "activations": ["--num_images", "64"],
    "attention": ["--num_images", "4"],
    "landscape": ["--num_images", "64", "--points", "5", "--grid", "3"],
    "weights": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("what", list(FILES))
def test_each_analysis_writes_its_files_and_report_section(tiny_run, what):
    assert main(["analyze", what, "--run", str(tiny_run), *FAST[what]]) == 0
    out = tiny_run / "analysis" / what
    for f in FILES[what]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    data = json.loads((out / f"{what}.json").read_text())
    report = (tiny_run / "report.md").read_text()
    assert f"## Analysis: {what}" in report and all(v in report for v in data["files"].values())
    if what == "features":
        assert 0.0 <= data["trained"]["linear_separability"] <= 1.0 and data["num_images"] == 100
        assert "reference_separability" in data  # the start is exact: its features are compared too
    elif what == "weights":
        changed = [r for r in data["layers"] if r.get("relative_change") is not None]
        assert len(changed) == len([r for r in data["layers"] if r["group"] != "head"]) > 0
        assert all(r["relative_change"] > 0 for r in changed)  # every matrix trained
        assert data["layers"][-1]["name"] == "head.fc.weight"
    elif what == "activations":
        assert [b["block"] for b in data["blocks"]] == [f"model.blocks.{i}" for i in range(6)]
        assert all(b["grad_rms"] > 0 and b["param_grad_norm"] > 0 for b in data["blocks"])
    elif what == "attention":
        assert data["num_blocks"] == 6 and data["grid"] == [2, 2] and data["query"] == "CLS token"
    else:
        assert len(data["one_d"]["loss"]) == 5 and len(data["two_d"]["loss"]) == 3
        mid = data["one_d"]["loss"][2]
        assert mid == pytest.approx(data["center_loss"], rel=1e-5)  # a = 0 is the trained model


def test_analyze_rejects_unknown_analysis(tmp_path, capsys):
    assert main(["analyze", "shapley", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "WHAT: expected one of" in err and "shapley" in err
