"""Checkpoints without frozen weights: a linear probe's checkpoint holds its head, resumes, tests, exports, and the
analysis rebuilds the exact start (a language model's random PatchEmbed included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.cli import main
from transferkit.errors import UserError
from transferkit.runs import load_run
from transferkit.tasks.frozen import FROZEN_KEY, omit_frozen_weights, restore_frozen_weights

ROOT = Path(__file__).resolve().parents[2]
LP = str(ROOT / "configs" / "classification" / "linear_probe.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = [
    "--data.image_size", "32",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
]  # fmt: skip


def test_omit_and_restore_round_trip_and_a_changed_start_is_refused():
    state = {"a": torch.randn(3, 3), "b": torch.randn(2)}
    ckpt = {"state_dict": dict(state)}
    assert omit_frozen_weights(ckpt, ["a", "missing"], "test start") == ["a"]
    assert set(ckpt["state_dict"]) == {"b"} and ckpt[FROZEN_KEY]["omitted"] == ["a"]
    restore_frozen_weights(state, ckpt)
    assert torch.equal(ckpt["state_dict"]["a"], state["a"])
    del ckpt["state_dict"]["a"]
    with pytest.raises(UserError, match="rebuilt weights differ"):
        restore_frozen_weights({**state, "a": state["a"] + 1}, ckpt)
    with pytest.raises(UserError, match="does not have"):
        restore_frozen_weights({"b": state["b"]}, ckpt)


@pytest.mark.slow
def test_a_probe_checkpoint_is_small_and_resumes_tests_and_analyses(tmp_path):
    runs = tmp_path / "runs"
    common = ["--config", LP, *QUIET, *TINY, "--runs_dir", str(runs), "--name", "probe"]
    assert (
        main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    )  # the pretrained MiniLM (22.7M parameters)
    run = runs / "probe"
    best = run / "checkpoints" / "best.ckpt"
    assert best.stat().st_size < 1_000_000, best.stat().st_size  # the head and buffers, not 91 MB
    before = json.loads((run / "metrics.json").read_text())["test"]["acc1"]
    assert main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0  # resumes
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), *QUIET]) == 0
    loaded = load_run(run, "best")
    assert loaded.model.backbone.pretrained and isinstance(before, float)
    assert main(["analyze", "weights", "--run", str(run)]) == 0
    weights = json.loads((run / "analysis" / "weights" / "weights.json").read_text())
    backbone = [r for r in weights["layers"] if r["name"].startswith("backbone.")]
    assert backbone and all(r["relative_change"] == 0.0 for r in backbone)  # frozen: exactly the start
    assert any(r["name"].startswith("backbone.patch_embed") for r in backbone)  # the random PatchEmbed too


@pytest.mark.slow
def test_a_checkpoint_whose_start_changed_is_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = [
        "--config",
        LP,
        *QUIET,
        *TINY,
        "--runs_dir",
        str(runs),
        "--name",
        "p",
        "--trainer.max_epochs",
        "1",
    ]
    assert main(["fit", *args, "--model.backbone.name", "vit-micro"]) == 0
    run = runs / "p"
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["backbone"]["seed"] = 1  # rebuilt under another seed: other weights
    torch.save(ckpt, run / "checkpoints" / "other.ckpt")
    capsys.readouterr()
    assert (
        main(
            [
                "test",
                "--config",
                str(run / "config.yaml"),
                "--ckpt_path",
                str(run / "checkpoints" / "other.ckpt"),
                *QUIET,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "rebuilt weights differ" in err and "Traceback" not in err
