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


#: Work per intra-op thread, by the matmul's dtype, below which another thread costs more than it gains: the FLOPs
#: of a loop step's largest matmul divided by the threads that share it. A kernel pays for a second thread once it
#: runs for a millisecond or two on one, which takes fewer FLOPs in float32 than in bfloat16. Measured on 2 cores
#: with sleeping (passive) OpenMP threads, ``python benchmarks/bench_threads.py --part sizes`` (a probe grid of
#: 4 x 36 heads, batch 256, 10 classes; seconds on 1 / 2 threads): bfloat16 2.81 / 3.20 s at 1,536 features,
#: 6.19 / 5.60 s at 3,840; float32 1.94 / 2.38 s at 384, 5.70 / 4.78 s at 1,536; the float64 logistic
#: regression at 1,537 features 3.41 / 2.08 s on 5,000 rows. The rule is within 7% (one run each) of the faster
#: of the two on every size there, and up to 1.6x faster than all threads.
MIN_FLOPS_PER_THREAD: dict[str, float] = {
    "bfloat16": 2.5e8,
    "float16": 2.5e8,
    "float32": 7.5e7,
    "float64": 5e7,
}


def threads_for_flops(flops: float, device: Any = "cpu", dtype: Any = "float32") -> int:
    """Intra-op threads for a loop of kernels whose largest does ``flops`` FLOPs in ``dtype`` (a torch dtype or
    its name): all of torch's threads on large ones, fewer (down to 1) on small ones, where waking threads for
    each of many small kernels costs more than they gain (:data:`MIN_FLOPS_PER_THREAD`); on a non-CPU device,
    torch's threads unchanged."""
    import torch

    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        return threads
    name = str(dtype).removeprefix("torch.")
    per_thread = MIN_FLOPS_PER_THREAD.get(name, MIN_FLOPS_PER_THREAD["float32"])
    return max(1, min(threads, int(flops // per_thread) if per_thread > 0 else threads))


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
