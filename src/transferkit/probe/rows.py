"""Rows of features, in memory or read on demand: what the linear-probe grid and kNN stream over.

:class:`FeatureRows` wraps a ``(N, D)`` (or ``(N, L, D)``, flattened to ``(N, L * D)``) torch tensor or numpy
array, or a :class:`~transferkit.probe.cache.FeatureSet` (features of the memory-mapped cache, read
``take(index)`` rows at a time), so the probes hold a few batches instead of every feature of a split, and their
peak memory does not grow with the number of images. Every read returns float32 torch tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class FeatureRows:
    """``(N, D)`` float32 rows of a feature source (module docstring)."""

    def __init__(self, source: Any) -> None:
        if isinstance(source, FeatureRows):
            source = source.source
        self.source = source
        if isinstance(source, torch.Tensor | np.ndarray):
            self._memory: Any = source
            n = int(source.shape[0])
            d = int(np.prod(source.shape[1:])) if source.ndim > 1 else 1
        elif hasattr(source, "take") and hasattr(source, "shape"):  # a FeatureSet
            self._memory = None
            n = int(source.shape[0])
            d = int(np.prod(source.shape[1:]))
        else:
            raise TypeError(
                f"features must be a tensor, an array or a FeatureSet, got {type(source).__name__}"
            )
        self.shape = (n, d)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the rows as float32."""
        return self.shape[0] * self.shape[1] * 4

    def take(self, index: np.ndarray | slice | torch.Tensor) -> torch.Tensor:
        """Rows ``index`` as a ``(B, D)`` float32 tensor."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if self._memory is not None:
            rows = self._memory[index]
            rows = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows))
        else:
            rows = torch.from_numpy(np.ascontiguousarray(self.source.take(index)))
        return rows.reshape(len(rows), -1).float()

    def chunks(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, rows)`` blocks of ``size`` consecutive rows."""
        for start in range(0, len(self), size):
            yield start, self.take(slice(start, start + size))

    def load(self) -> torch.Tensor:
        """Every row, ``(N, D)`` float32, in memory."""
        return self.take(slice(None))

    def mean_std(self, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
        """Column mean and population standard deviation ``(1, D)`` float32, in one streaming pass with float64
        sums (the same numbers whether the rows are in memory or read on demand)."""
        total = torch.zeros(self.shape[1], dtype=torch.float64)
        squares = torch.zeros(self.shape[1], dtype=torch.float64)
        for _, rows in self.chunks(chunk):
            r = rows.double()
            total += r.sum(0)
            squares += (r * r).sum(0)
        n = max(len(self), 1)
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0.0)
        return mean.float()[None], var.sqrt().float()[None]
