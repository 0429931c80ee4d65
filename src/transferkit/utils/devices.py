"""Where computation runs."""

from __future__ import annotations

from typing import Any

from transferkit.errors import UserError


def default_device() -> str:
    """``cuda`` when a CUDA device is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str = "auto") -> Any:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device(default_device())
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
