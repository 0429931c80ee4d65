"""Where computation runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferkit.errors import UserError

#: compute precisions of an extraction; ``auto`` is bfloat16 autocast where the device runs it fast
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


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


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX-512-BF16 or AMX; Linux ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` -> ``bfloat16`` on a CUDA device with bfloat16 or a CPU with AVX-512-BF16 / AMX, else
    ``float32``; any other value is returned as it is (checked)."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if dev.type == "cpu" and cpu_has_fast_bf16() else "float32"
