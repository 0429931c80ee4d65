"""Extraction with two processes (Lightning Fabric, gloo on CPU: ``ddp_spawn``, and ``ddp`` on two "nodes" a
launcher started) equals the one-process entry; the combinations that cannot work are one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from transferkit.backbones import resolve_backbone
from transferkit.data import ImageClassificationDataModule
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions, get_features
from transferkit.probe.distributed import rank_blocks, resolve_mode


def test_rank_blocks_are_contiguous_batch_aligned_and_cover_every_image():
    blocks = rank_blocks(1000, 64, 3)
    assert blocks[0][0] == 0 and blocks[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(start % 64 == 0 for start, _ in blocks)
    assert rank_blocks(5, 64, 2) == [(0, 0), (0, 5)]  # fewer batches than ranks: one rank idles


@pytest.mark.slow
def test_two_processes_give_the_one_process_entry_row_for_row(digits_folder, tmp_path):
    dm = ImageClassificationDataModule(source="imagefolder", path=str(digits_folder), image_size=32)
    bb = resolve_backbone("vit-micro", 32)
    kw = dict(
        layers=2, pooling="cls", extra_poolings=["mean"], progress=False, batch_size=16, precision="float32"
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # each of the two processes runs one thread: the same kernels
    try:
        one = get_features(bb, dm, "train", cache_dir=tmp_path / "one", **kw)
    finally:
        torch.set_num_threads(before)
    two = get_features(bb, dm, "train", cache_dir=tmp_path / "two", devices=2, accelerator="cpu", **kw)
    assert not two.metadata["cache_hit"] and two.metadata["key"] == one.metadata["key"]
    assert np.array_equal(two.labels, one.labels)
    assert np.array_equal(two._summaries, one._summaries)  # same order, same values, bit for bit
    again = get_features(bb, dm, "train", cache_dir=tmp_path / "two", devices=2, accelerator="cpu", **kw)
    assert again.metadata["cache_hit"]  # the entry is a normal one: served without any process


def test_extraction_options_are_checked():
    with pytest.raises(UserError, match="--devices and --num_nodes must be >= 1"):
        ExtractOptions(devices=0)
    with pytest.raises(UserError, match="unknown --strategy 'fsdp'; extraction is data-parallel"):
        ExtractOptions(strategy="fsdp")


@pytest.mark.parametrize(
    ("world", "devices", "num_nodes", "strategy", "outcome"),
    [
        (None, 1, 1, "auto", "single"),
        (None, 4, 1, "auto", "spawn"),
        (None, 4, 1, "ddp_spawn", "spawn"),
        ("8", 4, 2, "auto", "launched"),
        ("8", 4, 2, "ddp", "launched"),
        (None, 2, 1, "ddp", "--strategy ddp runs in processes a launcher started"),
        (None, 2, 2, "auto", "--num_nodes 2 needs the command started on every node by a launcher"),
        ("4", 2, 2, "ddp_spawn", "--strategy ddp_spawn starts its own processes"),
        (
            "8",
            1,
            1,
            "auto",
            "a launcher started 8 processes but --devices 1 x --num_nodes 1 is 1: pass --devices 4",
        ),
    ],
)
def test_strategy_and_launcher_combinations(monkeypatch, world, devices, num_nodes, strategy, outcome):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    if outcome in ("single", "spawn", "launched"):
        assert resolve_mode(devices, num_nodes, strategy) == outcome
    else:
        with pytest.raises(UserError, match=outcome.replace("(", r"\(")):
            resolve_mode(devices, num_nodes, strategy)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_a_launcher_started_write_the_one_process_entry(digits_folder, tmp_path):
    """``torchrun --nnodes 2`` (two "nodes" on this machine, one process each) runs ``transferkit extract``
    in both; rank 0 commits the entry, which equals a one-process extraction bit for bit, and writes the only
    run folder."""
    port = _free_port()
    argv = ["extract", "--data", str(digits_folder), "--data.image_size", "32", "--backbones", "vit-micro",
            "--splits", "train", "--layers", "2", "--pooling", "cls", "--extra_poolings", "[mean]",
            "--batch_size", "8", "--precision", "float32", "--progress", "false", "--cache_dir", str(tmp_path / "c"),
            "--runs_dir", str(tmp_path / "runs"), "--accelerator", "cpu", "--devices", "1", "--num_nodes", "2"]  # fmt: skip
    env = {**os.environ, "JSONARGPARSE_DEPRECATION_WARNINGS": "off", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(r),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "-m",
                "transferkit",
                *argv,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "extracted vit-micro train" in outs[0] and "wrote" in outs[0]  # rank 0 speaks and writes
    assert "extracted" not in outs[1] and "wrote" not in outs[1]  # rank 1 only extracts its block
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["extract"]  # one run folder: rank 0's
    metrics = json.loads((tmp_path / "runs" / "extract" / "metrics.json").read_text())
    assert metrics
    dm = ImageClassificationDataModule(source="imagefolder", path=str(digits_folder), image_size=32)
    kw = dict(
        layers=2, pooling="cls", extra_poolings=["mean"], progress=False, batch_size=8, precision="float32"
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran (OMP_NUM_THREADS=1)
    try:
        one = get_features("vit-micro", dm, "train", cache_dir=tmp_path / "one", **kw)
    finally:
        torch.set_num_threads(before)
    two = get_features("vit-micro", dm, "train", cache_dir=tmp_path / "c", **kw)
    assert two.metadata["cache_hit"] and two.metadata["key"] == one.metadata["key"]
    assert np.array_equal(two.labels, one.labels)
    assert np.array_equal(two._summaries, one._summaries)  # same order, same values, bit for bit
