"""Fixtures shared by several test folders: one torch thread, the tiny Qwen2.5-VL, a tiny grounding set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferkit.data.detection.shapes import ShapesConfig, make_shapes
from transferkit.vlm.tiny import ensure_tiny_qwen2_5_vl


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models only lose to thread hand-offs on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """The tiny random-init Qwen2.5-VL folder, built once per session."""
    return ensure_tiny_qwen2_5_vl(tmp_path_factory.getbasetemp() / "vlm-models")


@pytest.fixture(scope="module")
def grounding_shapes(tmp_path_factory) -> Path:
    """A 12-image shapes set as grounding JSONL (``{train,val,test}.jsonl``), at most 2 objects per image."""
    out = tmp_path_factory.mktemp("grounding-shapes")
    make_shapes(
        out,
        ShapesConfig(n=12, min_size=32, max_size=48, max_objects=2, val_fraction=0.25, test_fraction=0.25),
    )
    return out
