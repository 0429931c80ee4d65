"""Fixtures of the vision-language tests: the tiny Qwen2.5-VL processor, one torch thread per test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_processor(tiny_vlm_dir):
    from transferkit.vlm.model import load_processor

    return load_processor(str(tiny_vlm_dir))


@pytest.fixture(autouse=True)
def single_threaded(one_thread):
    """Every test here runs on one torch thread (``one_thread``)."""
