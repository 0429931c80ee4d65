"""Model representations from weights alone: a fixed-length weight-statistics vector, and an autoencoder
that compresses it.

Weight statistics (:func:`weight_statistics`)
    Any ``nn.Module`` (or state dict) -> a ``(dim,)`` float32 vector, ``dim = slots x per_slot`` (default
    ``64 x 128 = 8192``), deterministic and independent of parameter *names*, so unrelated architectures
    land in one space. The floating tensors of the state dict, in order, are split into *matrices*
    (``ndim >= 2``: projections, convolutions, embeddings) and *vectors* (biases, norm scales, BN
    statistics). Each kind is spread over ``slots`` depth slots (slot ``j`` holds the tensors at relative
    depth ``[j/S, (j+1)/S)``; with fewer tensors than slots, neighbouring slots repeat a tensor). Per slot and
    kind, ``per_slot / 2`` numbers: ``per_slot/2 - 8`` evenly spaced quantiles of a deterministic strided
    sample (at most ``sample`` values, each tensor contributing in proportion to its size) and 8 statistics
    (log tensor count, log element count, mean, std, mean |w|, RMS, skewness, excess kurtosis / 10). A kind
    a model does not have is all zeros.

Autoencoder (:class:`WeightAutoencoder`)
    MLP encoder ``dim -> hidden... -> code_dim`` and mirrored decoder; activation GELU / ReLU / LeakyReLU,
    dropout, reconstruction loss MSE or SmoothL1, optional L1 penalty on the code. Inputs are standardised
    per dimension with the training set's mean/std (stored as buffers, so a checkpoint embeds new models
    the same way). Trained by the ``autoencoder`` trainer (:mod:`transferkit.select.trainers`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import UserError
from transferkit.select.options import ACTIVATION_NAMES, AutoencoderConfig

log = logging.getLogger(__name__)

NUM_STATS = 8
ACTIVATIONS = dict(zip(ACTIVATION_NAMES, (nn.GELU, nn.ReLU, nn.LeakyReLU), strict=True))  # the options' names


# ---------------------------------------------------------------------------------------------- statistics
def _state_tensors(model: nn.Module | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out = []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        if name.endswith("num_batches_tracked"):
            continue
        out.append(t.detach())
    return out


def _slot_members(count: int, slots: int) -> list[range]:
    """Indices of the tensors each slot summarises: slot j covers relative depth [j/S, (j+1)/S), at least one."""
    out = []
    for j in range(slots):
        lo = (j * count) // slots
        hi = max(lo + 1, ((j + 1) * count) // slots)
        out.append(range(min(lo, count - 1), min(hi, count)))
    return out


def _strided_sample(tensors: Sequence[torch.Tensor], budget: int) -> torch.Tensor:
    """Up to ``budget`` values from ``tensors`` (each in proportion to its size, evenly strided), float64."""
    total = sum(t.numel() for t in tensors)
    parts = []
    for t in tensors:
        flat = t.reshape(-1)
        share = max(1, int(budget * t.numel() / total))
        step = max(1, math.ceil(flat.numel() / share))
        parts.append(flat[::step].to(torch.float64))
    return torch.cat(parts)


def _summary(tensors: Sequence[torch.Tensor], width: int, sample: int) -> torch.Tensor:
    """``width`` numbers: ``width - 8`` quantiles and 8 statistics of the values of ``tensors``."""
    q = width - NUM_STATS
    v = _strided_sample(tensors, sample)
    levels = (torch.arange(q, dtype=torch.float64) + 0.5) / q
    quantiles = torch.quantile(v, levels)
    mean, std = v.mean(), v.std(unbiased=False)
    centred = v - mean
    safe = std if std > 0 else torch.tensor(1.0, dtype=torch.float64)
    skew = (centred**3).mean() / safe**3 if std > 0 else torch.tensor(0.0, dtype=torch.float64)
    kurt = (centred**4).mean() / safe**4 - 3.0 if std > 0 else torch.tensor(0.0, dtype=torch.float64)
    numel = sum(t.numel() for t in tensors)
    stats = torch.stack(
        [
            torch.tensor(math.log1p(len(tensors)), dtype=torch.float64),
            torch.tensor(math.log1p(numel), dtype=torch.float64),
            mean,
            std,
            v.abs().mean(),
            v.pow(2).mean().sqrt(),
            skew.clamp(-50, 50),
            (kurt / 10).clamp(-50, 50),
        ]
    )
    return torch.cat([quantiles, stats])


@torch.no_grad()
def weight_statistics(
    model: nn.Module | Mapping[str, torch.Tensor],
    dim: int = 8192,
    slots: int = 64,
    sample: int = 16384,
) -> np.ndarray:
    """The ``(dim,)`` float32 weight-statistics vector of ``model`` (see the module docstring).

    ``dim`` must be ``slots x per_slot`` with ``per_slot`` even and ``per_slot / 2 > 8``.
    """
    if dim % slots or (dim // slots) % 2 or dim // slots // 2 <= NUM_STATS:
        raise UserError(
            f"dim ({dim}) must be slots ({slots}) x an even per-slot width > {2 * NUM_STATS} "
            f"(e.g. dim=8192, slots=64)"
        )
    width = dim // slots // 2
    tensors = _state_tensors(model)
    if not tensors:
        raise UserError("the model has no floating-point weights to summarise")
    out = torch.zeros(slots, 2, width, dtype=torch.float64)
    for k, kind in enumerate((lambda t: t.ndim >= 2, lambda t: t.ndim < 2)):
        group = [t for t in tensors if kind(t)]
        if not group:
            continue
        for j, members in enumerate(_slot_members(len(group), slots)):
            out[j, k] = _summary([group[i] for i in members], width, sample)
    vec = out.reshape(-1).numpy().astype(np.float32)
    if not np.isfinite(vec).all():  # e.g. float16 weights overflowing in a moment: keep the vector usable
        vec = np.nan_to_num(vec, nan=0.0, posinf=1e6, neginf=-1e6)
    return vec


# ---------------------------------------------------------------------------------------------- autoencoder
def _mlp(widths: Sequence[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class WeightAutoencoder(nn.Module):
    """``x (B, input_dim)`` raw weight statistics -> ``code (B, code_dim)`` -> reconstruction of the
    standardised input. ``loss(x)`` returns ``{'loss', 'recon', 'l1'}``."""

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = config or AutoencoderConfig(**kwargs)
        c = self.config
        if c.input_dim is None:
            raise UserError(
                "AutoencoderConfig.input_dim is unknown: set it, or train with AutoencoderTrainer"
            )
        widths = [c.input_dim, *c.hidden, c.code_dim]
        self.encoder = _mlp(widths, c.activation, c.dropout)
        self.decoder = _mlp(widths[::-1], c.activation, c.dropout)
        self.register_buffer("input_mean", torch.zeros(c.input_dim))
        self.register_buffer("input_std", torch.ones(c.input_dim))

    def set_normalization(self, x: torch.Tensor) -> None:
        """Standardise inputs with the mean/std of ``x`` ``(N, input_dim)``.

        The std is floored at the mean std over dimensions (at least 1e-6): with a handful of training
        models, a statistic nearly constant among them (e.g. a tensor count shared by one architecture) would
        otherwise blow a new model's difference up by orders of magnitude (on 8 digits-benchmark backbones,
        held-out reconstruction MSE 5e4 with a 1%-of-median floor, 1.1 with this one)."""
        self.input_mean.copy_(x.mean(dim=0))
        if len(x) < 2:
            self.input_std.fill_(1.0)
            return
        std = x.std(dim=0, unbiased=False)
        floor = max(1e-6, float(std.mean()))
        self.input_std.copy_(std.clamp_min(floor))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise UserError(
                f"expected weight-statistics vectors of shape (B, {self.config.input_dim}), got {tuple(x.shape)}"
            )
        return (x - self.input_mean) / self.input_std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)
        return self.decoder(code), code

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.normalize(x)
        recon, code = self(x)
        if self.config.loss == "mse":
            rec = nn.functional.mse_loss(recon, target)
        else:
            rec = nn.functional.smooth_l1_loss(recon, target)
        l1 = code.abs().mean()
        return {"loss": rec + self.config.l1_code * l1, "recon": rec, "l1": l1}

    @torch.no_grad()
    def embed(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """Codes ``(N, code_dim)`` of raw weight-statistics vectors ``(N, input_dim)`` (eval mode)."""
        was = self.training
        self.eval()
        try:
            x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
            return self.encode(x).numpy()
        finally:
            self.train(was)

    def checkpoint(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> WeightAutoencoder:
        model = cls(AutoencoderConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
