"""What a candidate backbone costs on the user's hardware, measured in this run, and budgets that filter the
recommendation (``transferkit rank --max_latency_ms / --max_memory_mb / --min_images_per_s``).

:func:`measure_cost` times ``forward_features`` on real images of the dataset, on the chosen device and
precision:

- ``images_per_s``: median throughput at the extraction batch size
  (:func:`~transferkit.probe.cache.measure_throughput`: warm-up, then the median of timed calls);
- ``latency_ms``: median wall time of one image (batch 1), same protocol;
- ``peak_memory_mb``: on CUDA, ``torch.cuda.max_memory_allocated`` over a forward at the batch size; on CPU,
  the weights and buffers plus the peak of live tensor bytes during that forward (:class:`LiveTensorBytes`);
  the allocator's own overhead is not counted;
- ``gflops``: forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and
  attention; element-wise ops are not counted), ``params``.

:func:`pareto_front` is the set of candidates no other beats on both the predicted score and the latency.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from transferkit.errors import UserError


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive (CPU or any device).

    Written here: torch measures peak memory only for CUDA (``max_memory_allocated``); outputs that alias an
    input's storage (views of weights or activations) are not new memory and are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._alive:
                continue
            self._alive.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key: int, size: int) -> None:
        if key in self._alive:
            self._alive.discard(key)
            self.live -= size


def _weight_bytes(module: torch.nn.Module) -> int:
    tensors = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.parameters()}
    tensors.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.buffers()})
    return int(sum(tensors.values()))


def measure_cost(
    backbone: Any,
    datamodule: Any,
    *,
    split: str = "train",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "float32",
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Throughput, batch-1 latency, peak memory, FLOPs per image and parameters of ``backbone`` (see the
    module docstring), with the device, precision, batch size, threads and load average they were measured
    under."""
    from torch.utils.flop_counter import FlopCounterMode

    from transferkit.probe.cache import measure_throughput, timing_batch

    kw = {"split": split, "device": device, "precision": precision, "warmup": warmup, "repeats": repeats}
    batch = measure_throughput(backbone, datamodule, batch_size=batch_size, **kw)
    single = measure_throughput(backbone, datamodule, batch_size=1, **kw)
    images, dev, _, autocast = timing_batch(backbone, datamodule, split, batch_size, device, precision)
    with torch.inference_mode(), autocast:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            backbone.forward_features(images)
            torch.cuda.synchronize(dev)
            peak = int(torch.cuda.max_memory_allocated(dev))
        else:
            tracker = LiveTensorBytes()
            with tracker:
                backbone.forward_features(images)
            peak = _weight_bytes(backbone) + tracker.peak
        counter = FlopCounterMode(display=False)
        with counter:
            backbone.forward_features(images[:1])
    return {
        "images_per_s": batch["images_per_s"],
        "images_per_s_range": batch["images_per_s_range"],
        "latency_ms": 1000.0 / single["images_per_s"],
        "latency_ms_range": [
            1000.0 / single["images_per_s_range"][1],
            1000.0 / single["images_per_s_range"][0],
        ],
        "peak_memory_mb": peak / 2**20,
        "gflops": counter.get_total_flops() / 1e9,
        "params": int(sum(p.numel() for p in backbone.parameters())),
        "batch_size": batch["batch_size"],
        **{k: batch[k] for k in ("device", "precision", "repeats", "threads", "cpus", "load_avg_1m")},
    }


@dataclass
class Budget:
    """Limits a recommended backbone must meet on this hardware (None: no limit).

    Args:
        max_latency_ms: batch-1 latency.
        max_memory_mb: peak memory of a forward at the batch size.
        min_images_per_s: throughput at the batch size.
    """

    max_latency_ms: float | None = None
    max_memory_mb: float | None = None
    min_images_per_s: float | None = None

    def __post_init__(self) -> None:
        for k in ("max_latency_ms", "max_memory_mb", "min_images_per_s"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise UserError(f"--{k} must be > 0, got {v}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_memory_mb, self.min_images_per_s))

    def violations(self, cost: Mapping[str, float]) -> list[str]:
        """What ``cost`` breaks, one phrase each (empty: within budget)."""
        out = []
        if self.max_latency_ms is not None and cost["latency_ms"] > self.max_latency_ms:
            out.append(f"latency {cost['latency_ms']:.1f} > {self.max_latency_ms:g} ms")
        if self.max_memory_mb is not None and cost["peak_memory_mb"] > self.max_memory_mb:
            out.append(f"memory {cost['peak_memory_mb']:.0f} > {self.max_memory_mb:g} MB")
        if self.min_images_per_s is not None and cost["images_per_s"] < self.min_images_per_s:
            out.append(f"throughput {cost['images_per_s']:.0f} < {self.min_images_per_s:g} img/s")
        return out


def pareto_front(predicted: Mapping[str, float], cost: Mapping[str, float]) -> list[str]:
    """Models no other model dominates (at least as good a prediction and as low a cost, better in one);
    ``predicted``: higher is better, ``cost``: lower is better. In ascending cost."""
    names = [n for n in predicted if n in cost and np.isfinite(predicted[n]) and np.isfinite(cost[n])]
    front = []
    for n in names:
        dominated = any(
            predicted[o] >= predicted[n]
            and cost[o] <= cost[n]
            and (predicted[o] > predicted[n] or cost[o] < cost[n])
            for o in names
            if o != n
        )
        if not dominated:
            front.append(n)
    return sorted(front, key=lambda n: cost[n])


def recommend(
    predicted: Mapping[str, float], costs: Mapping[str, Mapping[str, float]], budget: Budget
) -> dict[str, Any]:
    """The best-predicted model within ``budget``, the models over it (with why) and the Pareto set of the
    predicted score against latency."""
    over = {n: budget.violations(costs[n]) for n in predicted if n in costs}
    over = {n: v for n, v in over.items() if v}
    allowed = [n for n in predicted if n not in over and np.isfinite(predicted[n])]
    best = max(allowed, key=lambda n: predicted[n]) if allowed else None
    latency = {n: float(c["latency_ms"]) for n, c in costs.items()}
    return {"recommended": best, "over_budget": over, "pareto": pareto_front(predicted, latency)}


def plot_cost(predicted: Mapping[str, float], costs: Mapping[str, Mapping[str, float]], front: Sequence[str],
              path: Any, label: str) -> Any:  # fmt: skip
    """Predicted score against batch-1 latency, the Pareto set joined by a line."""
    from transferkit.report.plots import new_figure, save_figure

    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    names = [n for n in predicted if n in costs]
    xs = [costs[n]["latency_ms"] for n in names]
    ys = [predicted[n] for n in names]
    ax.scatter(xs, ys, color="#4c72b0")
    for n, x, y in zip(names, xs, ys):
        ax.annotate(n, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    if len(front) > 1:
        ax.plot([costs[n]["latency_ms"] for n in front], [predicted[n] for n in front], color="#dd8452")
    ax.set_xlabel("latency at batch 1 (ms)")
    ax.set_ylabel(label)
    ax.set_title("predicted transferability vs cost (orange: Pareto set)")
    return save_figure(fig, path)
