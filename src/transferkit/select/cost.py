"""What a candidate backbone costs on the user's hardware, measured in this run, and budgets that filter the
recommendation (``transferkit rank --max_latency_ms / --max_memory_mb / --min_images_per_s``).

:func:`measure_costs` measures every candidate on real images of the dataset, on the chosen device and
precision:

- ``latency_ms``: wall time of one image (batch 1), ``images_per_s``: throughput at the extraction batch size,
  both timed in interleaved rounds across the candidates (:func:`measure_interleaved`: warm-up rounds, then
  ``rounds`` rounds, each timing every candidate's call once in an order shuffled per round with a fixed
  seed), so that a load that comes and goes (another job on the machine) falls on every candidate alike. Each
  is reported as the median over rounds with its interquartile range (``*_iqr``: 25th and 75th percentile),
  its range (``*_range``: min, max) and the per-round values (``*_rounds``);
- ``peak_memory_mb``: on CUDA, the weights and the batch plus the peak allocated on top of them during a
  forward at the batch size, after one forward (``torch.cuda.max_memory_allocated``; other tensors on the
  device and allocations that outlive a forward, such as the cuBLAS workspace, are not counted); on CPU, the weights and buffers plus the peak of live tensor bytes during that forward
  (:class:`LiveTensorBytes`); the allocator's own overhead is not counted;
- ``gflops``: forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and
  attention; element-wise ops are not counted), ``params``.

Measured times are intervals, not points: two backbones whose interquartile ranges overlap are not told apart.
:func:`pareto_front` is the set of candidates no other beats on the predicted score and the latency (faster
means a latency interval entirely below); a latency or throughput budget (:class:`Budget`) rejects a
candidate only when its whole interval is past the limit and it overlaps no candidate within the limit
(:meth:`Budget.check`).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from transferkit.errors import UserError

log = logging.getLogger(__name__)

#: timed rounds of :func:`measure_interleaved` by default: in simulation, two identical models' interquartile
#: ranges over 21 rounds are disjoint in about 1 run in 700 under independent per-call noise (15 rounds: 1 in
#: 150) and almost never when a load shared by the round dominates
DEFAULT_ROUNDS = 21


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


def static_cost(
    backbone: Any,
    datamodule: Any,
    *,
    split: str = "train",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """Peak memory of a forward at ``batch_size``, FLOPs per image and parameters of ``backbone`` (what does
    not depend on when it is measured; see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    from transferkit.probe.cache import timing_batch

    images, dev, _, autocast = timing_batch(backbone, datamodule, split, batch_size, device, precision)
    with torch.inference_mode(), autocast:
        if dev.type == "cuda":
            backbone.forward_features(images)  # one-time allocations (the cuBLAS workspace) happen here
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)  # this backbone, the batch and whatever else is there
            torch.cuda.reset_peak_memory_stats(dev)
            backbone.forward_features(images)
            torch.cuda.synchronize(dev)
            added = int(torch.cuda.max_memory_allocated(dev)) - before
            peak = _weight_bytes(backbone) + images.untyped_storage().nbytes() + added
        else:
            tracker = LiveTensorBytes()
            with tracker:
                backbone.forward_features(images)
            peak = _weight_bytes(backbone) + tracker.peak
        counter = FlopCounterMode(display=False)
        with counter:
            backbone.forward_features(images[:1])
    return {
        "peak_memory_mb": peak / 2**20,
        "gflops": counter.get_total_flops() / 1e9,
        "params": int(sum(p.numel() for p in backbone.parameters())),
    }


def measure_interleaved(
    backbones: Mapping[str, Any],
    datamodule: Any,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    split: str = "train",
    device: str | torch.device | None = None,
    precision: str = "float32",
    warmup: int = 2,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Wall seconds of one ``forward_features`` call (``inference_mode``, ``precision`` autocast, on the first
    images of ``split``) of every backbone at every batch size, timed in interleaved rounds.

    Each round runs, for each batch size in turn, every backbone's call once, in an order drawn for that round
    and batch size from ``numpy.random.default_rng(seed)``; the first ``warmup`` rounds are not recorded.
    Returns ``seconds`` (``{name: {batch_size: [one per recorded round]}}``), ``images``
    (``{batch_size: images in that batch}``), ``orders`` (per recorded round, the order per batch size),
    ``rounds``, ``warmup``, ``seed``, ``device``, ``precision`` and the machine's threads and load average."""
    from transferkit.probe.cache import timing_batch
    from transferkit.utils.timing import machine_load

    if rounds < 1 or warmup < 0:
        raise UserError(f"timing needs rounds >= 1 and warmup >= 0, got rounds {rounds}, warmup {warmup}")
    sizes = sorted(set(batch_sizes))
    names = list(backbones)
    calls: dict[tuple[str, int], Callable[[], None]] = {}
    images: dict[int, int] = {}
    dev, resolved = torch.device("cpu"), precision
    for n in names:
        for bs in sizes:
            batch, dev, resolved, autocast = timing_batch(
                backbones[n], datamodule, split, bs, device, precision
            )
            images[bs] = int(batch.shape[0])

            def call(bb: Any = backbones[n], x: torch.Tensor = batch, ctx: Any = autocast) -> None:
                with torch.inference_mode(), ctx:
                    bb.forward_features(x)

            calls[(n, bs)] = call
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    log.info("timing %d backbone(s) at batch %s in %d interleaved rounds after %d warm-up", len(names),
             "/".join(map(str, sizes)), rounds, warmup)  # fmt: skip
    rng = np.random.default_rng(seed)
    seconds: dict[str, dict[int, list[float]]] = {n: {bs: [] for bs in sizes} for n in names}
    orders: list[dict[int, list[str]]] = []
    for r in range(warmup + rounds):
        this_round: dict[int, list[str]] = {}
        for bs in sizes:
            order = [names[i] for i in rng.permutation(len(names))]
            for n in order:
                sync()
                t0 = clock()
                calls[(n, bs)]()
                sync()
                if r >= warmup:
                    seconds[n][bs].append(clock() - t0)
            this_round[bs] = order
        if r >= warmup:
            orders.append(this_round)
    return {
        "seconds": seconds,
        "images": images,
        "orders": orders,
        "rounds": rounds,
        "warmup": warmup,
        "seed": seed,
        "device": str(dev),
        "precision": resolved,
        **machine_load(),
    }


def spread(values: Sequence[float], key: str, digits: int) -> dict[str, Any]:
    """``key``: the median of ``values``; ``key_iqr``: their 25th and 75th percentiles (numpy's linear
    interpolation); ``key_range``: min and max; ``key_rounds``: the values, rounded to ``digits``."""
    v = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {
        key: float(q50),
        f"{key}_iqr": [float(q25), float(q75)],
        f"{key}_range": [float(v.min()), float(v.max())],
        f"{key}_rounds": [round(float(x), digits) for x in v],
    }


def measure_timings(
    backbones: Mapping[str, Any],
    datamodule: Any,
    *,
    batch_size: int = 32,
    latency: bool = True,
    split: str = "train",
    device: str | torch.device | None = None,
    precision: str = "float32",
    warmup: int = 2,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Per backbone: throughput at ``batch_size`` (``images_per_s``) and, with ``latency``, the wall time of
    one image (``latency_ms``), each with its spread over the rounds of :func:`measure_interleaved`
    (:func:`spread`), and the conditions they were measured under."""
    t = measure_interleaved(
        backbones,
        datamodule,
        batch_sizes=(1, batch_size) if latency else (batch_size,),
        split=split,
        device=device,
        precision=precision,
        warmup=warmup,
        rounds=rounds,
        seed=seed,
        clock=clock,
    )
    n = t["images"][batch_size]
    conditions = {
        "batch_size": n,
        "timing": {
            "rounds": rounds,
            "warmup": warmup,
            "seed": seed,
            "interleaved_with": len(backbones),
            "spread": "iqr",
        },
        **{k: t[k] for k in ("device", "precision", "threads", "cpus", "load_avg_1m")},
    }
    out = {}
    for name, sec in t["seconds"].items():
        entry = spread([n / s for s in sec[batch_size]], "images_per_s", 2)
        if latency:
            entry.update(spread([1000.0 * s for s in sec[1]], "latency_ms", 4))
        out[name] = {**entry, **conditions}
    return out


def measure_costs(
    backbones: Mapping[str, Any],
    datamodule: Any,
    *,
    split: str = "train",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "float32",
    warmup: int = 2,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Throughput, batch-1 latency (interleaved across ``backbones``: :func:`measure_timings`), peak memory,
    FLOPs per image and parameters (:func:`static_cost`) of every backbone, with the device, precision, batch
    size, timing protocol, threads and load average they were measured under. Every backbone is on the device
    at once while the rounds run."""
    fixed = {
        n: static_cost(bb, datamodule, split=split, batch_size=batch_size, device=device, precision=precision)
        for n, bb in backbones.items()
    }
    timed = measure_timings(
        backbones,
        datamodule,
        batch_size=batch_size,
        split=split,
        device=device,
        precision=precision,
        warmup=warmup,
        rounds=rounds,
        seed=seed,
        clock=clock,
    )
    return {n: {**timed[n], **fixed[n]} for n in backbones}


def measure_cost(backbone: Any, datamodule: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_costs` of one backbone (its rounds are not interleaved with any other)."""
    return measure_costs({"backbone": backbone}, datamodule, **kwargs)["backbone"]


def interval(cost: Mapping[str, Any], key: str) -> tuple[float, float]:
    """The interquartile range ``cost[key + '_iqr']``, or the point ``cost[key]`` when none was recorded."""
    iqr = cost.get(f"{key}_iqr")
    if iqr is None:
        v = float(cost[key])
        return v, v
    return float(iqr[0]), float(iqr[1])


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the closed intervals ``a`` and ``b`` share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def _tied(spans: Mapping[str, Sequence[float]], inside: Sequence[str]) -> dict[str, str]:
    """The names outside ``inside`` whose interval overlaps that of a name inside, directly or through other
    such names: ``{name: the one it overlaps}``."""
    admitted = list(inside)
    ties: dict[str, str] = {}
    grew = True
    while grew:
        grew = False
        for n in spans:
            if n in ties or n in inside:
                continue
            m = next((m for m in admitted if overlaps(spans[n], spans[m])), None)
            if m is not None:
                ties[n] = m
                admitted.append(n)
                grew = True
    return ties


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

    def breaches(self, cost: Mapping[str, Any]) -> dict[str, str]:
        """What ``cost`` breaks on its own, ``{latency|memory|throughput: phrase}``: a timed quantity only when
        its whole interquartile range is past the limit."""
        out = {}
        if self.max_latency_ms is not None:
            lo, hi = interval(cost, "latency_ms")
            if lo > self.max_latency_ms:
                out["latency"] = (
                    f"latency {cost['latency_ms']:.1f} (IQR {lo:.1f}-{hi:.1f}) > {self.max_latency_ms:g} ms"
                )
        if self.max_memory_mb is not None and cost["peak_memory_mb"] > self.max_memory_mb:
            out["memory"] = f"memory {cost['peak_memory_mb']:.0f} > {self.max_memory_mb:g} MB"
        if self.min_images_per_s is not None:
            lo, hi = interval(cost, "images_per_s")
            if hi < self.min_images_per_s:
                out["throughput"] = (
                    f"throughput {cost['images_per_s']:.0f} (IQR {lo:.0f}-{hi:.0f}) < "
                    f"{self.min_images_per_s:g} img/s"
                )
        return out

    def violations(self, cost: Mapping[str, Any]) -> list[str]:
        """What ``cost`` breaks on its own, one phrase each (empty: within budget)."""
        return list(self.breaches(cost).values())

    def check(
        self, costs: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """``(over, ties)`` for the backbones of ``costs``: ``over`` maps each backbone over the budget to what
        it breaks; a timed limit never separates backbones the measurement cannot tell apart, so a backbone
        whose latency (throughput) interval overlaps, directly or through others, that of a backbone within the
        limit is kept, and ``ties`` says with which one."""
        found = {n: self.breaches(c) for n, c in costs.items()}
        ties: dict[str, list[str]] = {}
        for kind, key in (("latency", "latency_ms"), ("throughput", "images_per_s")):
            if not any(kind in b for b in found.values()):
                continue
            spans = {n: interval(c, key) for n, c in costs.items()}
            inside = [n for n in costs if kind not in found[n]]
            for n, m in _tied(spans, inside).items():
                del found[n][kind]
                ties.setdefault(n, []).append(f"{kind} overlaps {m}'s")
        return {n: list(b.values()) for n, b in found.items() if b}, ties


def pareto_front(
    predicted: Mapping[str, float],
    cost: Mapping[str, float],
    spread: Mapping[str, Sequence[float]] | None = None,
) -> list[str]:
    """Models no other model dominates; ``predicted``: higher is better; ``cost``: lower is better, with its
    interval per model in ``spread`` (default: the point). ``o`` dominates ``n`` when it is predicted at least
    as well and not slower, and predicted better or faster, where faster means an interval entirely below the
    other's: models whose intervals overlap count as equally fast. In ascending cost."""
    names = [n for n in predicted if n in cost and np.isfinite(predicted[n]) and np.isfinite(cost[n])]
    span = {n: (float(spread[n][0]), float(spread[n][1])) if spread and n in spread else (cost[n], cost[n])
            for n in names}  # fmt: skip

    def faster(a: str, b: str) -> bool:
        return span[a][1] < span[b][0]

    front = [
        n
        for n in names
        if not any(
            predicted[o] >= predicted[n]
            and not faster(n, o)
            and (predicted[o] > predicted[n] or faster(o, n))
            for o in names
            if o != n
        )
    ]
    return sorted(front, key=lambda n: cost[n])


def recommend(
    predicted: Mapping[str, float], costs: Mapping[str, Mapping[str, Any]], budget: Budget
) -> dict[str, Any]:
    """The best-predicted model within ``budget`` (:meth:`Budget.check`), the models over it (with why), the
    ones kept because their timing overlaps one within it, and the Pareto set of the predicted score against
    the latency interval (:func:`pareto_front`)."""
    measured = {n: costs[n] for n in predicted if n in costs}
    over, ties = budget.check(measured)
    allowed = [n for n in predicted if n not in over and np.isfinite(predicted[n])]
    best = max(allowed, key=lambda n: predicted[n]) if allowed else None
    latency = {n: float(c["latency_ms"]) for n, c in measured.items()}
    spans = {n: interval(c, "latency_ms") for n, c in measured.items()}
    return {
        "recommended": best,
        "over_budget": over,
        "budget_ties": ties,
        "pareto": pareto_front(predicted, latency, spans),
        "latency_interval": "iqr" if any("latency_ms_iqr" in c for c in measured.values()) else "point",
    }


def cost_figure(predicted: Mapping[str, float], costs: Mapping[str, Mapping[str, Any]], front: Sequence[str],
                label: str) -> Any:  # fmt: skip
    """Predicted score against batch-1 latency (median, interquartile range as a bar); the Pareto set, of any
    size, ringed in orange (the artist with gid ``pareto``) and joined by a line when it has two members or
    more. Returns the figure."""
    from transferkit.report.plots import new_figure

    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    names = [n for n in predicted if n in costs and np.isfinite(predicted[n])]
    xs = np.array([float(costs[n]["latency_ms"]) for n in names])
    ys = np.array([float(predicted[n]) for n in names])
    spans = np.array([interval(costs[n], "latency_ms") for n in names]).reshape(-1, 2)
    ax.errorbar(xs, ys, xerr=[xs - spans[:, 0], spans[:, 1] - xs], fmt="o", color="#4c72b0", ecolor="#9bb0d3",
                capsize=3, label="latency: median, IQR over rounds")  # fmt: skip
    for n, x, y in zip(names, xs, ys):
        ax.annotate(n, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    members = [n for n in front if n in names]
    if members:
        fx = [float(costs[n]["latency_ms"]) for n in members]
        fy = [float(predicted[n]) for n in members]
        if len(members) > 1:
            ax.plot(fx, fy, color="#dd8452", zorder=3)
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="#dd8452", linewidths=2, zorder=4,
                   label=f"Pareto set ({len(members)})", gid="pareto")  # fmt: skip
    ax.set_xlabel("latency at batch 1 (ms)")
    ax.set_ylabel(label)
    ax.set_title("predicted transferability vs latency")
    ax.legend(fontsize=8)
    return fig


def plot_cost(predicted: Mapping[str, float], costs: Mapping[str, Mapping[str, Any]], front: Sequence[str],
              path: Any, label: str) -> Any:  # fmt: skip
    """:func:`cost_figure` written as a PNG to ``path``; returns the path."""
    from transferkit.report.plots import save_figure

    return save_figure(cost_figure(predicted, costs, front, label), path)
