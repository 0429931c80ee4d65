"""Corruptions: shapes, ranges, determinism, and severity lowering a trained model's accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.errors import UserError
from transferkit.evaluation.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    RobustnessAccumulator,
    corrupt,
    resolve_corruptions,
)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_keeps_shape_and_range_and_is_deterministic(name):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    diffs = []
    for s in SEVERITIES:
        y = corrupt(x, name, s, seed=1)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        torch.testing.assert_close(y, corrupt(x, name, s, seed=1))
        diffs.append(float((y - x).abs().mean()))
    assert diffs[-1] > 0.01, diffs  # severity 5 visibly changes the image


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown corruption"):
        resolve_corruptions("fog,jpeg")
    with pytest.raises(UserError, match="severity"):
        corrupt(torch.rand(1, 3, 8, 8), "jpeg", 6)
    assert resolve_corruptions("none") == [] and resolve_corruptions("all") == list(CORRUPTIONS)


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained for a few seconds on the real digits (32 px), and the digits test images."""
    from transferkit.data.sources import DigitsSource

    torch.manual_seed(0)
    splits = DigitsSource(32).splits()

    def tensors(ds):
        x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 255
        return x, torch.tensor(ds.targets)

    xtr, ytr = tensors(splits["train"])
    xte, yte = tensors(splits["test"])
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(4):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, xte, yte


def test_severity_lowers_accuracy_of_a_trained_model_on_average(digits_model):
    model, x, y = digits_model
    with torch.no_grad():
        clean = float((model(x).argmax(-1) == y).float().mean())
    assert clean > 0.85, clean
    acc = RobustnessAccumulator(list(CORRUPTIONS), list(SEVERITIES), seed=0)
    for i in range(0, len(x), 128):
        acc.update(x[i : i + 128], y[i : i + 128], model)
    result = acc.result(clean)
    means = [result["mean_per_severity"][str(s)] for s in SEVERITIES]
    assert all(a >= b for a, b in zip([clean, *means], means)), (clean, means)  # monotone on average
    assert means[-1] < clean - 0.1, (clean, means)
    assert result["num_images"] == len(y) and 0 < result["relative_robustness"] < 1
    noise = [result["accuracy"]["gaussian_noise"][str(s)] for s in SEVERITIES]
    assert noise[-1] < noise[0], noise
    assert np.isfinite(result["mean_corrupted"])
