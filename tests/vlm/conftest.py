"""Fixtures of the vision-language tests: the tiny random-init Qwen2.5-VL, built once per session."""

from __future__ import annotations

import pytest
import torch

from transferkit.vlm.tiny import ensure_tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    return ensure_tiny_qwen2_5_vl(tmp_path_factory.getbasetemp() / "vlm-models")


@pytest.fixture(scope="session")
def tiny_processor(tiny_vlm_dir):
    from transferkit.backbones.vlm import load_processor

    return load_processor(str(tiny_vlm_dir))


@pytest.fixture(autouse=True)
def one_thread():
    # a 0.2M-parameter model only loses to thread hand-offs on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
