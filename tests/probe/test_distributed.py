"""Extraction with two processes (Lightning Fabric, ddp_spawn, gloo on CPU) equals the one-process entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import resolve_backbone
from transferkit.data import ImageClassificationDataModule
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions, get_features
from transferkit.probe.distributed import rank_blocks


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
    with pytest.raises(UserError, match="--devices must be >= 1"):
        ExtractOptions(devices=0)
