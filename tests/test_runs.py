"""Run directories: atomic unique creation, configs, metrics merging, checkpoints."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from transferkit.errors import UserError
from transferkit.runs import RunDir, command_config


def _claim(runs_dir: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(str(RunDir.create(runs_dir, "same", "fit").path))


def test_concurrent_runs_with_the_same_name_get_two_folders(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    paths = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(paths) == sorted(str(tmp_path / n) for n in ("same", "same-2", "same-3", "same-4"))
    for p in paths:
        assert json.loads((tmp_path / p / "run.json").read_text())["command"] == "fit"


def test_create_open_config_metrics_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()  # an empty folder made by hand may be claimed
    run = RunDir.create(tmp_path, "empty", "compare")
    assert run.path == tmp_path / "empty"
    assert RunDir.create(tmp_path, "empty", "compare").name == "empty-2"
    for bad in ("", "a/b", "..", "x\0y"):
        with pytest.raises(UserError, match="cannot be a folder name"):
            RunDir.create(tmp_path, bad, "fit")
    assert run.write_config() is None  # no command config outside the CLI
    with command_config("name: empty\n"):
        run.write_config()
        run.write_config(command="test")
    assert run.read_config() == {"name": "empty"} and run.config_file("test").name == "config.test.yaml"
    assert RunDir.open(run.path) == run
    with pytest.raises(UserError, match="no config.yaml"):
        RunDir.open(RunDir.create(tmp_path, "other", "fit").path)
    run.update_metrics({"val": {"acc1": 0.5, "loss": 1.0}, "command": "fit"})
    run.update_metrics({"val": {"acc1": 0.6}, "test": {"acc1": 0.55}})
    assert run.read_metrics() == {"val": {"acc1": 0.6, "loss": 1.0}, "command": "fit", "test": {"acc1": 0.55}}
    with pytest.raises(UserError, match="the run has none"):
        run.checkpoint("best")
    (run.path / "checkpoints").mkdir()
    (run.path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run.checkpoint("last").name == "last.ckpt"
    with pytest.raises(UserError, match="the run has last.ckpt"):
        run.checkpoint("best")
    assert RunDir.of_checkpoint(run.path / "checkpoints" / "last.ckpt") == run
