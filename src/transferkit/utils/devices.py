"""Where computation runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


#: Work per intra-op thread below which another thread costs more than it gains: the FLOPs of a step's largest
#: matmul divided by the threads that share it. Measured on 2 cores with sleeping (passive) OpenMP threads, a
#: linear-probe grid step (batch 256, 360 outputs) took 2.7 ms on one thread and 3.4 ms on two at 1,536
#: features (0.28 GFLOP), 5.4 and 4.3 ms at 3,840 features (0.71 GFLOP): ``python benchmarks/bench_threads.py``.
MIN_FLOPS_PER_THREAD = 2.5e8


def threads_for_flops(flops: float, device: Any = "cpu") -> int:
    """Intra-op threads for a loop of kernels whose largest does ``flops`` FLOPs: all of torch's threads on
    large ones, fewer (down to 1) on small ones, where waking threads for each of many small kernels costs
    more than they gain; on a non-CPU device, torch's threads unchanged."""
    import torch

    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        return threads
    return max(1, min(threads, int(flops // MIN_FLOPS_PER_THREAD) if MIN_FLOPS_PER_THREAD > 0 else threads))


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``torch.set_num_threads``), restored after. Nothing in
    torch or its libraries sizes the thread team per loop of small kernels, hence this."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
