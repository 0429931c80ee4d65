"""Checkpoints under faults: a kill during a save (``$TMPDIR`` on another filesystem) leaves the previous file
intact; a truncated checkpoint is one line naming the others; SIGTERM during ``fit`` saves a resumable
checkpoint and exits 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from transferkit.checkpoint_io import AtomicCheckpointIO
from transferkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
LP = str(ROOT / "configs" / "classification" / "linear_probe.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--model.backbone.name", "vit-micro", "--data.image_size", "32"]

# saves a large checkpoint over ckpt_path through the plugin; the parent kills it mid-write
SAVER = """
import sys, torch
from transferkit.checkpoint_io import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"w": torch.ones(120_000_000)}, sys.argv[1])
"""


def _other_filesystem(folder: Path) -> str | None:
    for candidate in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(candidate) and os.stat(candidate).st_dev != os.stat(folder).st_dev:
            return candidate
    return None


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    folder = tmp_path / "checkpoints"
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no folder on another filesystem to put $TMPDIR on (no tmpfs at /dev/shm)")
    good = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(5.0)}, good)
    env = {**os.environ, "TMPDIR": other}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(good)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.stat().st_size > 1_000_000 for p in folder.glob(".last.ckpt.*")
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed while writing, not finished
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(good)["w"], torch.arange(5.0))


def test_a_truncated_checkpoint_is_one_line_naming_the_others(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--config", LP, *QUIET, *TINY, "--runs_dir", str(runs), "--name", "t", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]  # fmt: skip
    assert main(["fit", *args, "--trainer.max_epochs", "1"]) == 0
    last = runs / "t" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # what a copy killed half-way used to leave
    capsys.readouterr()
    assert main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "last.ckpt is unreadable" in err and "best.ckpt" in err


@pytest.mark.slow
def test_sigterm_during_fit_saves_a_resumable_checkpoint_and_exits_non_zero(tmp_path):
    runs = tmp_path / "runs"
    args = ["fit", "--config", LP, *QUIET, *TINY, "--runs_dir", str(runs), "--name", "s",
            "--data.batch_size", "8", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferkit.cli", *args, "--trainer.max_epochs", "200"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    marker = runs / "s" / "run.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (marker.is_file() and '"started"' in marker.read_text()):
        time.sleep(0.1)
    time.sleep(1.5)  # well into training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    last = runs / "s" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] > 0
    epochs = saved["epoch"] + 2
    assert (
        main([*args, "--trainer.max_epochs", str(epochs), "--ckpt_path", "last"]) == 0
    )  # resumes to the end
    assert torch.load(last, weights_only=False)["epoch"] == epochs - 1
