"""Feature extraction on several devices (or CPU processes) of one machine, through Lightning Fabric.

:func:`extract_sharded` runs :func:`~transferkit.probe.cache.extract_summaries` in every process Fabric's
``ddp_spawn`` strategy starts: the dataset's batches are cut into contiguous, batch-aligned blocks, one per rank,
so every image sits in the same batch as in a one-process pass; each rank writes its block into its own
memory-mapped shard, and once all have finished (a barrier) the shards are concatenated in order. The result
equals a one-process extraction row for row. Jobs started by a launcher (torchrun, SLURM: several nodes) are not
supported yet and are refused with a one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from transferkit.errors import UserError


def world_from_environment() -> int:
    """Processes an external launcher (torchrun, SLURM) started for this job (1 when none)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_blocks(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of the ``world`` ranks: contiguous and aligned to ``batch_size``."""
    batches = -(-n // batch_size)
    bounds = [r * batches // world for r in range(world + 1)]
    return [(min(b * batch_size, n), min(e * batch_size, n)) for b, e in zip(bounds, bounds[1:])]


def _run(
    fabric: Any, extract: Callable, backbone: Any, dataset: Any, shard_dir: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    rank, world = fabric.global_rank, fabric.world_size
    if fabric.device.type == "cpu":  # the processes of this machine share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    start, stop = rank_blocks(len(dataset), kwargs["batch_size"], world)[rank]
    shard = Path(shard_dir) / f"shard-{rank:05d}"
    timing: dict[str, float] = {"seconds": 0.0, "images_per_s": 0.0, "num_images": 0}
    if stop > start:

        def allocate(shape: tuple[int, ...], dt: Any) -> np.ndarray:
            return np.lib.format.open_memmap(shard.with_suffix(".npy"), mode="w+", dtype=dt, shape=shape)

        arr, labels, timing = extract(
            backbone, Subset(dataset, range(start, stop)), device=fabric.device, allocate=allocate, **kwargs
        )
        if isinstance(arr, np.memmap):
            arr.flush()
        kept = int(len(labels))
        del arr
        np.save(shard.with_suffix(".labels.npy"), labels)
        (shard.with_suffix(".count")).write_text(str(kept))
    fabric.barrier()
    return {"rank": rank, "world": world, "timing": timing}


def extract_sharded(
    extract: Callable,
    backbone: Any,
    dataset: Any,
    shard_dir: Path,
    *,
    devices: int,
    accelerator: str = "auto",
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Extract ``dataset`` with ``extract`` (:func:`~transferkit.probe.cache.extract_summaries`) in one process
    per device (``kwargs`` as it takes them, ``device`` excepted); returns ``(summaries (N, L, S, D), labels (N,), timing)`` like it, assembled from the
    ranks' shards in ``shard_dir`` (the summaries are a memmap in the storage format)."""
    import time

    from lightning.fabric import Fabric

    if world_from_environment() > 1:
        raise UserError(
            f"feature extraction in a job a launcher started ({world_from_environment()} processes) is not "
            "supported; run the command once per machine with --devices N"
        )
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp_spawn")
    shard_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fabric.launch(_run, extract, backbone, dataset, str(shard_dir), kwargs)
    seconds = time.perf_counter() - start
    arr, labels, timing = assemble_shards(shard_dir)
    timing.update(seconds=seconds, images_per_s=len(labels) / max(seconds, 1e-9))  # process start-up included
    return arr, labels, timing


def assemble_shards(shard_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Concatenate the ranks' shards in rank order into ``shard_dir/summaries.npy`` (memory-mapped; a shard is
    copied block by block, nothing proportional to N is held in memory)."""
    shards = sorted(shard_dir.glob("shard-*.npy"))
    shards = [s for s in shards if not s.name.endswith(".labels.npy")]
    if not shards:
        raise UserError(f"no rank wrote features into {shard_dir}")
    parts = [np.load(s, mmap_mode="r") for s in shards]
    counts = [int(s.with_suffix(".count").read_text()) for s in shards]
    labels = np.concatenate([np.load(s.with_suffix(".labels.npy")) for s in shards])
    total = sum(counts)
    out = np.lib.format.open_memmap(shard_dir / "summaries.npy", mode="w+", dtype=parts[0].dtype,
                                    shape=(total, *parts[0].shape[1:]))  # fmt: skip
    at = 0
    for part, count in zip(parts, counts):
        for i in range(0, count, 4096):
            j = min(i + 4096, count)
            out[at + i : at + j] = part[i:j]
        at += count
    out.flush()
    for s in shards:
        for suffix in (".npy", ".labels.npy", ".count"):
            s.with_suffix(suffix).unlink(missing_ok=True)
    return out, labels, {"seconds": 0.0, "images_per_s": 0.0, "num_images": total}
