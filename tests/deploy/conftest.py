"""Shared fixtures of the deploy tests: one tiny run on real digits, fitted once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
LP = str(ROOT / "configs" / "classification" / "linear_probe.yaml")
# a tiny random-init ViT probed for a handful of batches: tests of export mechanics, not of accuracy
TINY_FIT = [
    "--model.backbone.name", "vit-micro",
    "--data.image_size", "32",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "5",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def fit_tiny_run(runs_dir: Path, name: str = "tiny") -> Path:
    assert main(["fit", "--config", LP, "--runs_dir", str(runs_dir), "--name", name, *TINY_FIT]) == 0
    run = runs_dir / name
    assert (run / "checkpoints" / "best.ckpt").is_file()
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """``runs/tiny``: vit-micro linear probe on 32px digits (1 epoch, 5 batches)."""
    return fit_tiny_run(tmp_path_factory.mktemp("deploy-runs"))


@pytest.fixture(scope="session")
def onnx_export(tiny_run, tmp_path_factory):
    """The tiny run exported to ONNX (an ExportResult), shared by the artifact/server tests."""
    from transferkit.deploy.export import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("onnx-artifact") / "onnx", "onnx")
