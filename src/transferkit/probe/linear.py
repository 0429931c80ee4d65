"""Linear probes on cached features: a whole grid of heads trained together in one pass per epoch.

This follows DINOv2's linear evaluation (``dinov2/eval/linear.py``: ``setup_linear_classifiers`` /
``AllClassifiers``): one linear classifier per (feature variant, learning rate), every head sees the same
mini-batches, the summed cross-entropy is minimised by one SGD optimiser (momentum 0.9, no weight decay) with
one parameter group per head, the learning rates are base rates scaled by ``batch_size / 256``, a cosine
schedule decays them to 0 over the run, weights start ``N(0, 0.01)`` and biases at 0. The best head on the
validation split is reported on the test split.

Differences, on purpose:

- the backbone never runs here: heads train on cached features (:mod:`transferkit.probe.cache`), so there is
  no train-time augmentation (DINOv2 uses random-resized crops + flips), and 100 epochs cost seconds;
- each feature variant is standardised with the mean/std of its *training* features (what a
  ``BatchNorm1d(affine=False)`` in front of the head converges to, as in MAE's linear probe), so one LR grid
  suits backbones whose feature scales differ by orders of magnitude (language models vs ViTs);
- one head per (learning rate, weight decay) pair: DINOv2 searches the learning rate only; on small data the
  decay axis gains points (CLIP_benchmark sweeps it too);
- the training matmuls run in bfloat16 where the device runs it fast (``precision='auto'``; float32 master
  weights, loss and evaluation): 2.1x faster on a 2-core CPU with AVX-512-BF16 (``benchmarks/bench_probes.py
  --grid_only`` against its ``--precision float32``).

A *feature variant* is a pooling of the last ``k`` blocks, concatenated over the blocks (DINOv2's
``n_last_blocks``; its ``avgpool`` variant is our ``cls+mean``): ``(N, k, D) -> (N, k * D)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import UserError
from transferkit.probe.options import (  # noqa: F401  (re-exported)
    DEFAULT_C_POWERS,
    DEFAULT_LEARNING_RATES,
    DEFAULT_WEIGHT_DECAYS,
    GRID_PRECISIONS,
    LogRegConfig,
)
from transferkit.probe.rows import FeatureRows
from transferkit.utils.devices import intra_op_threads, resolve_precision, threads_for_flops

log = logging.getLogger(__name__)


@dataclass
class LinearGridConfig:
    """Hyper-parameters of the one-pass linear-probe grid.

    Args:
        learning_rates: base learning rates (each head's LR is ``lr * batch_size / 256``).
        epochs: passes over the cached training features.
        batch_size: mini-batch size.
        momentum: SGD momentum.
        weight_decays: L2 weight decays searched with the learning rates (one head per pair; DINOv2 searches the
            learning rate only, with no decay: ``(0.0,)``; CLIP_benchmark's decay sweep gains points on small data).
        normalize: standardise each feature variant with its training mean/std (BN(affine=False)-style).
        seed: seed of the head initialisation and the batch order.
        max_in_memory_mb: features of every variant and split up to this many MiB (as float32) are loaded
            into memory (on the training device) once; beyond it, each mini-batch is read from the memory-mapped
            features, so memory does not grow with N. The two give the same heads, bit for bit.
        precision: the training matmuls' precision: ``auto`` (bfloat16 where the device runs it fast, as the
            extraction's ``auto``; else float32), ``float32`` or ``bfloat16``. Weights, their updates, the loss and
            the val/test evaluation are float32 either way.
    """

    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    normalize: bool = True
    seed: int = 0
    max_in_memory_mb: float = 1024.0
    precision: str = "auto"

    def check(self) -> None:
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise UserError(f"learning_rates must be positive numbers, got {list(self.learning_rates)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decays or any(not wd >= 0 for wd in self.weight_decays):
            raise UserError(f"weight_decays must be numbers >= 0, got {list(self.weight_decays)}")
        if self.max_in_memory_mb < 0:
            raise UserError(f"max_in_memory_mb must be >= 0, got {self.max_in_memory_mb}")
        if self.precision not in GRID_PRECISIONS:
            raise UserError(
                f"unknown grid precision '{self.precision}'; choose one of {list(GRID_PRECISIONS)}"
            )


@dataclass
class Variant:
    """One feature variant: ``features[split]`` is ``(N_split, D)`` (a tensor, an array or a memory-mapped
    :class:`~transferkit.probe.cache.FeatureSet` view, see :class:`~transferkit.probe.rows.FeatureRows`);
    ``info`` describes it (pooling, layers)."""

    name: str
    features: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return FeatureRows(next(iter(self.features.values()))).shape[1]


@dataclass
class LinearGridResult:
    """Outcome of :func:`train_linear_grid`.

    ``heads``: one row per head (``name``, ``variant``, variant info such as ``pooling``/``layers``, ``lr`` (base),
    ``lr_scaled``, ``val_acc1``, ``val_loss``), in training order. ``best``: the row of the head chosen on val.
    ``val`` / ``test``: that head's ``acc1``, ``acc5``, ``loss``, ``per_class_acc`` (list in class order),
    ``num_samples``; ``test`` is None without test features. ``test_pred``: its test predictions ``(N,)``.
    """

    heads: list[dict[str, Any]]
    best: dict[str, Any]
    val: dict[str, Any]
    test: dict[str, Any] | None
    config: dict[str, Any]
    seconds: float
    steps: int
    test_pred: np.ndarray | None = None
    #: the trained heads (all of them) and the per-variant standardisation, to reuse the best head
    model: GridHeads | None = field(default=None, repr=False)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (no tensors)."""
        return {k: getattr(self, k) for k in ("heads", "best", "val", "test", "config", "seconds", "steps")}


class GridHeads(nn.Module):
    """``H`` independent linear heads (one per learning rate) for each feature variant.

    The heads of a variant are one ``(H * C, D)`` weight and one ``(H * C,)`` bias, so all of them are evaluated
    by a single matmul: ``x (B, D) -> logits (B, H, C)``. Per-head learning rates (DINOv2 gives each classifier
    its own param group) are applied by :meth:`scale_grads` (see :func:`train_linear_grid`).
    """

    def __init__(self, dims: Mapping[str, int], num_heads: int, num_classes: int, generator: torch.Generator):
        super().__init__()
        self.variants = list(dims)
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.weights = nn.ParameterList(
            nn.Parameter(
                torch.empty(num_heads * num_classes, dims[v]).normal_(0.0, 0.01, generator=generator)
            )
            for v in self.variants
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(num_heads * num_classes)) for _ in self.variants
        )

    def forward_variant(
        self, v_index: int, x: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """x (B, D) -> float32 logits (B, H, C) of the variant's heads, the matmul in ``dtype`` (the float32
        weights cast to it, as autocast would; the gradient flows back to them in float32)."""
        w, b = self.weights[v_index], self.biases[v_index]
        out = F.linear(x.to(dtype), w.to(dtype), b.to(dtype)).float()  # (B, H * C)
        return out.view(len(x), self.num_heads, self.num_classes)

    @torch.no_grad()
    def scale_grads(self, head_lr: torch.Tensor, head_wd: torch.Tensor | None = None) -> None:
        """``grad <- head_lr[h] * (grad + head_wd[h] * param)`` for the rows of head ``h`` (biases undecayed).

        With plain momentum SGD (no dampening, no Nesterov) at learning rate ``eta_t`` this is exactly SGD
        with per-head learning rate ``head_lr[h] * eta_t`` and L2 weight decay: the momentum buffer is linear
        in the gradients and ``head_lr`` is constant, so it factors out of the buffer.
        """
        rows = head_lr.repeat_interleave(self.num_classes)  # (H * C,)
        decay = head_wd.repeat_interleave(self.num_classes) if head_wd is not None else None
        for w, b in zip(self.weights, self.biases):
            if decay is not None and bool(decay.any()):
                w.grad.add_(w * decay[:, None])
            w.grad.mul_(rows[:, None])
            b.grad.mul_(rows)


class _Standardized:
    """A variant's splits standardised with its train mean/std, in memory or read batch by batch; the training
    rows in ``train_dtype`` (the matmuls' dtype, cast once), the others in float32."""

    def __init__(
        self,
        variant: Variant,
        normalize: bool,
        device: torch.device,
        in_memory: bool,
        train_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.rows = {s: FeatureRows(x) for s, x in variant.features.items()}
        train = self.rows["train"]
        if normalize:
            mean, std = train.mean_std()
            std = std.clamp_min(1e-6)
        else:
            mean, std = torch.zeros(1, train.shape[1]), torch.ones(1, train.shape[1])
        self.stats = (mean, std)
        self.device = device
        self.dtypes = {s: train_dtype if s == "train" else torch.float32 for s in self.rows}
        self.memory = (
            {s: ((r.load() - mean) / std).to(device, self.dtypes[s]) for s, r in self.rows.items()}
            if in_memory
            else None
        )

    def take(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Standardised rows ``index`` (a CPU index tensor) on the device."""
        if self.memory is not None:
            return self.memory[split][index.to(self.device)]
        mean, std = self.stats
        return ((self.rows[split].take(index) - mean) / std).to(self.device, self.dtypes[split])

    def chunks(self, split: str, size: int = 4096) -> Iterator[torch.Tensor]:
        if self.memory is not None:
            x = self.memory[split]
            for i in range(0, len(x), size):
                yield x[i : i + size]
            return
        mean, std = self.stats
        for _, rows in self.rows[split].chunks(size):
            yield ((rows - mean) / std).to(self.device)


@torch.no_grad()
def _evaluate(heads: GridHeads, v_index: int, chunks: Iterator[torch.Tensor], y: torch.Tensor) -> tuple:
    """All heads of a variant on a split given as standardised chunks: logits (H, N, C), acc1 (H,), loss (H,)."""
    logits = torch.cat([heads.forward_variant(v_index, x) for x in chunks]).transpose(0, 1)
    acc1 = (logits.argmax(-1) == y).float().mean(1)
    loss = torch.stack([F.cross_entropy(lg, y) for lg in logits])
    return logits, acc1, loss


def _metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """logits (N, C), labels (N,) -> acc1, acc5, loss, per-class accuracy (class order)."""
    k = min(5, num_classes)
    top = logits.topk(k, dim=-1).indices
    correct1 = top[:, 0] == y
    per_class = []
    for c in range(num_classes):
        mask = y == c
        per_class.append(float(correct1[mask].float().mean()) if mask.any() else float("nan"))
    return {
        "acc1": float(correct1.float().mean()),
        "acc5": float((top == y[:, None]).any(-1).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
        "per_class_acc": per_class,
        "num_samples": int(len(y)),
    }


def train_linear_grid(
    variants: Sequence[Variant],
    labels: Mapping[str, torch.Tensor],
    num_classes: int,
    config: LinearGridConfig | None = None,
    *,
    device: str | torch.device = "cpu",
) -> LinearGridResult:
    """Train every (variant, LR) head together on ``train``, choose the best on ``val``, report ``test``.

    Args:
        variants: feature variants, each with ``features['train']``, ``['val']`` and optionally ``['test']``
            as ``(N_split, D_v)`` float tensors (same rows, in the same order, in every variant).
        labels: ``{'train': (N,), 'val': (N,), 'test': (N,)}`` int64 class indices.
        num_classes: number of classes C.
        config: the grid (LRs, epochs, batch size...).
        device: where the heads train.

    The best head maximises val top-1; ties go to the lower val loss, then to the earlier head.
    """
    cfg = config or LinearGridConfig()
    cfg.check()
    if not variants:
        raise UserError("the linear-probe grid needs at least one feature variant")
    for split in ("train", "val"):
        if split not in labels:
            raise UserError(f"the linear-probe grid needs '{split}' labels")
    has_test = "test" in labels and all("test" in v.features for v in variants)
    device = torch.device(device)
    y = {s: t.to(device=device, dtype=torch.long) for s, t in labels.items()}
    if int(y["train"].max()) >= num_classes or int(y["train"].min()) < 0:
        raise UserError(f"training labels must be in [0, {num_classes}), got max {int(y['train'].max())}")
    n_train = len(y["train"])
    for v in variants:
        for s, x in v.features.items():
            if s in y and len(FeatureRows(x)) != len(y[s]):
                raise UserError(
                    f"variant '{v.name}': {len(FeatureRows(x))} {s} features but {len(y[s])} labels"
                )
    total = sum(FeatureRows(x).nbytes for v in variants for x in v.features.values())
    in_memory = total <= cfg.max_in_memory_mb * 2**20
    precision = resolve_precision(cfg.precision, device)  # auto -> bfloat16 where fast, else float32
    compute = torch.bfloat16 if precision == "bfloat16" else torch.float32
    feats = {v.name: _Standardized(v, cfg.normalize, device, in_memory, compute) for v in variants}
    stats = {name: f.stats for name, f in feats.items()}
    if not in_memory:
        log.info(
            "linear grid: %.0f MiB of features, over max_in_memory_mb: batches are read from disk",
            total / 2**20,
        )

    gen = torch.Generator().manual_seed(cfg.seed)
    lrs = [float(lr) for lr in cfg.learning_rates]
    wds = [float(wd) for wd in cfg.weight_decays]
    pairs = [(lr, wd) for wd in wds for lr in lrs]  # head h: (learning rate, weight decay)
    n_heads = len(pairs)
    heads = GridHeads({v.name: v.dim for v in variants}, n_heads, num_classes, gen).to(device)
    scale = cfg.batch_size / 256.0
    head_lr = torch.tensor([lr * scale for lr, _ in pairs], device=device)
    head_wd = torch.tensor([wd for _, wd in pairs], device=device)
    # one optimizer at LR 1 (times the cosine factor); per-head LRs enter through GridHeads.scale_grads
    optimizer = torch.optim.SGD(heads.parameters(), lr=1.0, momentum=cfg.momentum, weight_decay=0.0)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)

    start = time.perf_counter()
    train_x = [feats[v.name] for v in variants]
    y_train = y["train"]
    # a step is many small kernels: on a CPU, as many threads as its largest matmul (B x D x H * C) keeps busy
    step_flops = 2 * min(cfg.batch_size, n_train) * max(v.dim for v in variants) * n_heads * num_classes
    threads = threads_for_flops(step_flops, device, compute)
    with intra_op_threads(threads):
        for _ in range(cfg.epochs):
            perm = torch.randperm(n_train, generator=gen)
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                yb = y_train[idx.to(device)][:, None].expand(-1, n_heads)  # (B, H)
                loss = 0.0
                for vi, x in enumerate(train_x):
                    logits = heads.forward_variant(vi, x.take("train", idx), compute)  # (B, H, C)
                    # sum over heads of each head's mean cross-entropy (DINOv2 sums the heads' losses); the
                    # classes as dim 1 of a (B, C, H) view: torch's CPU log-softmax over a last dim of ~10 is 4x
                    # slower
                    loss = loss + F.cross_entropy(logits.transpose(1, 2), yb, reduction="sum") / len(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                heads.scale_grads(head_lr, head_wd)
                optimizer.step()
                scheduler.step()
    seconds = time.perf_counter() - start

    rows: list[dict[str, Any]] = []
    val_logits: dict[tuple[int, int], torch.Tensor] = {}
    for vi, v in enumerate(variants):
        logits, acc1, loss = _evaluate(heads, vi, feats[v.name].chunks("val"), y["val"])
        for li, (lr, wd) in enumerate(pairs):
            val_logits[(vi, li)] = logits[li]
            rows.append(
                {
                    "name": f"{v.name}/lr={lr:g}" + (f"/wd={wd:g}" if len(wds) > 1 or wd else ""),
                    "variant": v.name,
                    **v.info,
                    "lr": lr,
                    "weight_decay": wd,
                    "lr_scaled": lr * scale,
                    "val_acc1": float(acc1[li]),
                    "val_loss": float(loss[li]) if math.isfinite(float(loss[li])) else None,
                }
            )
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            -rows[i]["val_acc1"],
            rows[i]["val_loss"] if rows[i]["val_loss"] is not None else math.inf,
            i,
        ),
    )
    best_i = order[0]
    best_vi, best_li = divmod(best_i, n_heads)
    best = rows[best_i]
    val = _metrics(val_logits[(best_vi, best_li)], y["val"], num_classes)
    test = None
    test_pred = None
    if has_test:
        with torch.no_grad():
            chunks = feats[variants[best_vi].name].chunks("test")
            logits = torch.cat([heads.forward_variant(best_vi, x)[:, best_li] for x in chunks])
        test = _metrics(logits, y["test"], num_classes)
        test_pred = logits.argmax(-1).cpu().numpy()
    log.info(
        "linear grid: %d heads (%d variants x %d LRs x %d weight decays), %d epochs, %d steps (%s, %s) in "
        "%.1fs; best %s val %.4f test %s",
        len(rows),
        len(variants),
        len(lrs),
        len(wds),
        cfg.epochs,
        total_steps,
        precision,
        _where(device, threads),
        seconds,
        best["name"],
        best["val_acc1"],
        f"{test['acc1']:.4f}" if test else "-",
    )
    return LinearGridResult(
        heads=rows,
        best=best,
        val=val,
        test=test,
        config={**asdict(cfg), "learning_rates": lrs, "weight_decays": wds, "precision": precision},
        seconds=seconds,
        steps=total_steps,
        test_pred=test_pred,
        model=heads,
        stats=stats,
    )


def feature_variants(
    train: Any,
    val: Any,
    test: Any | None,
    *,
    poolings: Sequence[str],
    layers: Sequence[int | None],
) -> list[Variant]:
    """Variants ``pooling x last-k blocks`` from three :class:`~transferkit.probe.cache.FeatureSet` (any
    stored views; ``layers`` entries are k, or None for the final output) — no backbone run, nothing copied:
    the grid reads the memory-mapped features (or loads them, within ``max_in_memory_mb``)."""
    out = []
    splits = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    for pooling in poolings:
        for k in layers:
            feats = {s: fs.view(pooling, k) for s, fs in splits.items()}  # read on demand, (N, k*D) rows
            name = f"{pooling}/{'final' if k is None else f'last{k}'}"
            out.append(Variant(name, feats, {"pooling": pooling, "layers": k}))
    return out


# ---------------------------------------------------------------------------------------------- logistic regression
@dataclass
class LogRegResult:
    """Outcome of :func:`train_logistic_regression`: the sweep (``sweep``: one row per C with ``c``,
    ``val_acc1``, ``val_loss``, ``iterations``), the chosen ``c``, the chosen model's ``val``/``test`` metrics
    (as :class:`LinearGridResult`), ``test_pred`` and the seconds of the whole sweep."""

    sweep: list[dict[str, Any]]
    c: float
    val: dict[str, Any]
    test: dict[str, Any] | None
    config: dict[str, Any]
    seconds: float
    test_pred: np.ndarray | None = None


def _fit_logreg(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, w0: torch.Tensor, cfg: LogRegConfig
) -> tuple[torch.Tensor, int]:
    """Multinomial logistic regression: minimise ``C * sum_i CE_i + ||W||^2 / 2`` (scikit-learn's objective,
    scaled by ``1 / (C N)``; the bias is not penalised) with torch's L-BFGS, from ``w0`` ``(D + 1, K)``."""
    n = len(y)
    w = w0.clone().requires_grad_(True)
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    opt = torch.optim.LBFGS(
        [w], lr=1.0, max_iter=cfg.max_iter, tolerance_grad=cfg.tol, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + (w[:-1] ** 2).sum() / (2.0 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    iterations = int(opt.state[w].get("n_iter", 0)) if w in opt.state else 0
    return w.detach(), iterations


def train_logistic_regression(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    num_classes: int,
    config: LogRegConfig | None = None,
    *,
    device: str | torch.device = "cpu",
) -> LogRegResult:
    """Sweep C on ``train`` (warm-started from strong to weak regularisation), choose the best val top-1 (ties:
    ``config.ties``, by default the lower val loss, then the smaller C), report ``test``.

    Args:
        features: ``{'train': (N, D), 'val': (N, D)[, 'test': (N, D)]}`` float tensors.
        labels: the matching ``(N,)`` int64 class indices.
        num_classes: number of classes K.
        config: the sweep.
        device: where to fit (float64 on CPU, float32 on GPUs).
    """
    cfg = config or LogRegConfig()
    cfg.check()
    for split in ("train", "val"):
        if split not in features or split not in labels:
            raise UserError(f"logistic regression needs '{split}' features and labels")
    device = torch.device(device)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    train = features["train"].to(device=device, dtype=dtype)
    if cfg.normalize:
        mean = train.mean(0, keepdim=True)
        std = train.std(0, unbiased=False, keepdim=True).clamp_min(1e-6)
    else:
        mean, std = torch.zeros_like(train[:1]), torch.ones_like(train[:1])
    x = {s: (f.to(device=device, dtype=dtype) - mean) / std for s, f in features.items()}
    y = {s: t.to(device=device, dtype=torch.long) for s, t in labels.items()}
    start = time.perf_counter()
    w = torch.zeros(x["train"].shape[1] + 1, num_classes, dtype=dtype, device=device)
    sweep, weights = [], []
    # an L-BFGS iteration is a few small kernels over (N, D) x (D, K): threads by that matmul's size
    n_fit = len(y["train"]) + (len(y["val"]) if cfg.refit else 0)
    threads = threads_for_flops(2 * n_fit * w.numel(), device, dtype)
    with intra_op_threads(threads):
        for p in sorted(cfg.c_powers):
            c = float(10.0**p)
            w, iterations = _fit_logreg(x["train"], y["train"], num_classes, c, w, cfg)
            with torch.no_grad():
                logits = _affine(x["val"], w)
                sweep.append(
                    {
                        "c": c,
                        "val_acc1": float((logits.argmax(-1) == y["val"]).float().mean()),
                        "val_loss": float(F.cross_entropy(logits, y["val"])),
                        "iterations": iterations,
                    }
                )
            weights.append(w)

        # smallest_c: the first of a tie, the sweep running C upwards
        def rank(i: int) -> tuple[float, float, int]:
            return -sweep[i]["val_acc1"], sweep[i]["val_loss"] if cfg.ties == "val_loss" else 0.0, i

        best_i = min(range(len(sweep)), key=rank)
        best_w, c = weights[best_i], sweep[best_i]["c"]
        val = _metrics(_affine(x["val"], best_w).float(), y["val"], num_classes)
        if cfg.refit:
            xy = torch.cat([x["train"], x["val"]]), torch.cat([y["train"], y["val"]])
            best_w, _ = _fit_logreg(xy[0], xy[1], num_classes, c, best_w, cfg)
    test = test_pred = None
    if "test" in x and "test" in y:
        logits = _affine(x["test"], best_w).float()
        test = _metrics(logits, y["test"], num_classes)
        test_pred = logits.argmax(-1).cpu().numpy()
    seconds = time.perf_counter() - start
    log.info(
        "logistic regression: %d values of C in %.1fs (%s); best C %.3g val %.4f test %s",
        len(sweep),
        seconds,
        _where(device, threads),
        c,
        sweep[best_i]["val_acc1"],
        f"{test['acc1']:.4f}" if test else "-",
    )
    return LogRegResult(
        sweep, c, val, test, {**asdict(cfg), "c_powers": list(cfg.c_powers)}, seconds, test_pred
    )


def _where(device: torch.device, threads: int) -> str:
    """``'1 thread'`` / ``'2 threads'`` on a CPU, else the device type (for the log lines)."""
    return f"{threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else device.type


def _affine(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]
