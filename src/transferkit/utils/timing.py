"""Timed sections: median and spread of repeated calls after warm-up, with the conditions they ran under."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def machine_load() -> dict[str, Any]:
    """What shares the machine while timing: torch's thread count and the 1-minute load average."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        load = None
    return {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_1m": load}


def time_calls(
    fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5, sync: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Wall time of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (``sync`` after each, e.g.
    ``torch.cuda.synchronize``). ``{"median_s", "min_s", "max_s", "repeats", **machine_load()}``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        **machine_load(),
    }
