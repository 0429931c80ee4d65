import pytest
import torch

from transferkit.backbones import resolve_backbone
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.select.cost import Budget, LiveTensorBytes, measure_cost, pareto_front, recommend


def test_live_tensor_bytes_counts_new_storages_not_views():
    w = torch.randn(256, 256)  # 256 KiB, made outside: not counted
    with LiveTensorBytes() as t:
        a = torch.empty(1024, 1024)  # 4 MiB
        del a
        b = torch.empty(512, 1024)  # 2 MiB, twice, alive together
        c = torch.empty(512, 1024)
        _ = w.t(), w[:10]  # views of an outside tensor
        _ = b.view(-1)
    assert t.peak == 4 * 2**20 and t.live == 4 * 2**20
    del b, c, _  # the last view of b goes too
    assert t.live == 0


def test_throughput_depends_on_the_batch_and_flops_on_the_image_size():
    dm = DataSpec({"source": "digits", "image_size": 32}).build()
    bb = resolve_backbone("vit-micro", 32)
    one = measure_cost(bb, dm, batch_size=1, device="cpu", precision="float32", repeats=3)
    many = measure_cost(bb, dm, batch_size=32, device="cpu", precision="float32", repeats=3)
    assert many["batch_size"] == 32 and one["batch_size"] == 1
    assert many["images_per_s"] > 2 * one["images_per_s"]  # per-call overhead amortised over the batch
    assert many["peak_memory_mb"] > one["peak_memory_mb"]  # activations grow with the batch
    assert many["gflops"] == pytest.approx(one["gflops"])  # per image
    big = measure_cost(resolve_backbone("vit-micro", 64), DataSpec({"source": "digits", "image_size": 64}).build(),
                       batch_size=1, device="cpu", precision="float32", repeats=1)  # fmt: skip
    assert big["gflops"] > 3 * one["gflops"]  # 4x the patches (the class token and head do not grow)


COSTS = {
    "fast": {"latency_ms": 1.0, "peak_memory_mb": 10.0, "images_per_s": 1000.0},
    "mid": {"latency_ms": 5.0, "peak_memory_mb": 50.0, "images_per_s": 200.0},
    "slow": {"latency_ms": 20.0, "peak_memory_mb": 400.0, "images_per_s": 50.0},
    "waste": {"latency_ms": 30.0, "peak_memory_mb": 500.0, "images_per_s": 30.0},
}
PREDICTED = {"fast": 0.1, "mid": 0.5, "slow": 0.9, "waste": 0.4}

BUDGETS = [
    (Budget(), "slow", []),
    (Budget(max_latency_ms=10), "mid", ["slow", "waste"]),
    (Budget(max_memory_mb=20), "fast", ["mid", "slow", "waste"]),
    (Budget(min_images_per_s=100), "mid", ["slow", "waste"]),
    (Budget(max_latency_ms=0.5), None, ["fast", "mid", "slow", "waste"]),
]


@pytest.mark.parametrize(("budget", "best", "over"), BUDGETS)
def test_budgets_filter(budget, best, over):
    rec = recommend(PREDICTED, COSTS, budget)
    assert rec["recommended"] == best and sorted(rec["over_budget"]) == over
    assert rec["pareto"] == ["fast", "mid", "slow"]  # "waste" is slower and predicted worse than "slow"


def test_pareto_front_ties():
    assert pareto_front({"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0}) == ["b"]
    assert pareto_front({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == ["a", "b"]


def test_bad_budget():
    with pytest.raises(UserError, match="max_latency_ms must be > 0"):
        Budget(max_latency_ms=-1)
