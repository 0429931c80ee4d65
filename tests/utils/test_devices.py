import pytest
import torch

import transferkit.utils.devices as devices
from transferkit.probe.linear import (
    GridHeads,
    LinearGridConfig,
    Variant,
    train_linear_grid,
    train_logistic_regression,
)
from transferkit.utils.devices import MIN_FLOPS_PER_THREAD, intra_op_threads, threads_for_flops


@pytest.fixture
def two_threads():
    with intra_op_threads(2):
        yield


BF16, F32 = MIN_FLOPS_PER_THREAD["bfloat16"], MIN_FLOPS_PER_THREAD["float32"]


@pytest.mark.parametrize(
    "flops, device, dtype, expected",
    [
        (0, "cpu", torch.float32, 1),
        (F32 * 0.99, "cpu", torch.float32, 1),
        (F32 * 1.5, "cpu", "float32", 1),
        (F32 * 2, "cpu", torch.float32, 2),
        (F32 * 2, "cpu", torch.bfloat16, 1),  # the same FLOPs run ~8x faster in bfloat16: one thread
        (BF16 * 2, "cpu", torch.bfloat16, 2),
        (BF16 * 1e3, "cpu", torch.bfloat16, 2),  # never more than torch has
        (F32 * 2, "cpu", "int8", 2),  # an unlisted dtype counts as float32
        (0, "meta", torch.float32, 2),  # not a CPU: torch's threads unchanged
    ],
)
def test_threads_for_flops(two_threads, flops, device, dtype, expected):
    assert threads_for_flops(flops, device, dtype) == expected


def test_threads_for_flops_without_a_threshold_uses_every_thread(two_threads, monkeypatch):
    monkeypatch.setitem(devices.MIN_FLOPS_PER_THREAD, "float32", 0.0)
    assert threads_for_flops(1.0) == 2


def test_intra_op_threads_restores_after_an_error(two_threads):
    with pytest.raises(RuntimeError), intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


@pytest.fixture
def grid_threads(monkeypatch):
    """The intra-op threads seen by each of the grid's training forwards."""
    seen: list[int] = []
    forward = GridHeads.forward_variant

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not the evaluation
            seen.append(torch.get_num_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GridHeads, "forward_variant", spy)
    return seen


def _problem(dim: int, n: int = 64, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    feats = {s: torch.randn(n, dim, generator=g) for s in ("train", "val")}
    labels = {s: torch.randint(0, classes, (n,), generator=g) for s in feats}
    return feats, labels, classes


def test_small_grid_and_logreg_train_on_one_thread_and_restore(two_threads, grid_threads, monkeypatch):
    seen = grid_threads
    feats, labels, classes = _problem(8)
    train_linear_grid([Variant("v", feats, {})], labels, classes, LinearGridConfig(epochs=2, batch_size=32))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2

    fits = []
    import transferkit.probe.linear as linear

    fit = linear._fit_logreg
    monkeypatch.setattr(
        linear, "_fit_logreg", lambda *a, **k: (fits.append(torch.get_num_threads()), fit(*a, **k))[1]
    )
    train_logistic_regression(feats, labels, classes)
    assert fits and set(fits) == {1}
    assert torch.get_num_threads() == 2


def test_large_grid_steps_use_every_thread(two_threads, grid_threads, monkeypatch):
    seen = grid_threads
    # 2 * batch * D * heads * classes over the threshold twice: both threads
    monkeypatch.setattr(devices, "MIN_FLOPS_PER_THREAD", dict.fromkeys(devices.MIN_FLOPS_PER_THREAD, 1.0))
    feats, labels, classes = _problem(8)
    train_linear_grid([Variant("v", feats, {})], labels, classes, LinearGridConfig(epochs=1, batch_size=32))
    assert seen and set(seen) == {2}
