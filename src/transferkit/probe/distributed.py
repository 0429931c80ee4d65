"""Feature extraction on several devices, processes or machines, through Lightning Fabric.

Two ways, one result (:func:`resolve_mode` picks from ``--devices``, ``--num_nodes``, ``--strategy`` and the
environment):

- ``ddp_spawn`` (``--devices N``, no launcher): :func:`extract_sharded` starts one process per device for the
  extraction and collects the entry in the command's process;
- ``ddp`` (a launcher such as ``torchrun --nnodes M --nproc_per_node N`` started the command in every process):
  :func:`extract_on_ranks` runs in each of them, with the Fabric of :func:`launched_fabric`.

Either way the dataset's batches are cut into contiguous, batch-aligned blocks, one per rank, so every image sits
in the same batch as in a one-process pass; each rank writes its block into its own memory-mapped shard, and
once all have finished (a barrier) rank 0 concatenates the shards in order. The result equals a one-process
extraction row for row. A float16 overflow on any rank is agreed on by all (an all-reduce), so every rank redoes
the pass in float32 together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from transferkit.errors import UserError
from transferkit.probe.options import resolve_mode  # noqa: F401  (re-exported)

_FABRICS: dict[tuple[str, int, int], Any] = {}


def launched_fabric(accelerator: str, devices: int, num_nodes: int) -> Any:
    """The Fabric (``ddp``) of this launcher-started process, made and joined to its group once per command."""
    key = (accelerator, devices, num_nodes)
    if key not in _FABRICS:
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
        fabric.launch()  # the launcher made the processes: this joins the process group
        _FABRICS[key] = fabric
    return _FABRICS[key]


def rank_blocks(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of the ``world`` ranks: contiguous and aligned to ``batch_size``."""
    batches = -(-n // batch_size)
    bounds = [r * batches // world for r in range(world + 1)]
    return [(min(b * batch_size, n), min(e * batch_size, n)) for b, e in zip(bounds, bounds[1:])]


def _run(
    fabric: Any,
    extract: Callable,
    backbone: Any,
    dataset: Any,
    shard_dir: str,
    kwargs: dict[str, Any],
    overflow: type[BaseException],
) -> dict[str, Any]:
    """This rank's block into ``shard_dir/shard-<rank>.npy``; ``overflowed`` is true on every rank when any
    rank's block went beyond the storage format's range (nothing is kept then)."""
    rank, world = fabric.global_rank, fabric.world_size
    if fabric.device.type == "cpu":  # the processes of this machine share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    start, stop = rank_blocks(len(dataset), kwargs["batch_size"], world)[rank]
    shard = Path(shard_dir) / f"shard-{rank:05d}"
    timing: dict[str, float] = {"seconds": 0.0, "images_per_s": 0.0, "num_images": 0}
    overflowed = False
    if stop > start:

        def allocate(shape: tuple[int, ...], dt: Any) -> np.ndarray:
            return np.lib.format.open_memmap(shard.with_suffix(".npy"), mode="w+", dtype=dt, shape=shape)

        opts = {**kwargs, "progress": bool(kwargs.get("progress")) and rank == 0}
        try:
            arr, labels, timing = extract(
                backbone, Subset(dataset, range(start, stop)), device=fabric.device, allocate=allocate, **opts
            )
        except overflow:
            overflowed = True
        else:
            if isinstance(arr, np.memmap):
                arr.flush()
            kept = int(len(labels))
            del arr
            np.save(shard.with_suffix(".labels.npy"), labels)
            (shard.with_suffix(".count")).write_text(str(kept))
    flag = torch.tensor([float(overflowed)], device=fabric.device)
    overflowed = bool(fabric.all_reduce(flag, reduce_op="sum").item() > 0)
    fabric.barrier()
    return {"rank": rank, "world": world, "timing": timing, "overflowed": overflowed}


def extract_sharded(
    extract: Callable,
    backbone: Any,
    dataset: Any,
    shard_dir: Path,
    *,
    devices: int,
    accelerator: str = "auto",
    overflow: type[BaseException] = OverflowError,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Extract ``dataset`` with ``extract`` (:func:`~transferkit.probe.cache.extract_summaries`) in ``devices``
    processes this call starts (``ddp_spawn``; ``kwargs`` as ``extract`` takes them, ``device`` excepted);
    returns ``(summaries (N, L, S, D), labels (N,), timing)`` like it, assembled from the ranks' shards in
    ``shard_dir`` (the summaries are a memmap in the storage format). Raises ``overflow`` when any rank's values
    went beyond the storage format."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp_spawn")
    shard_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = fabric.launch(_run, extract, backbone, dataset, str(shard_dir), kwargs, overflow)
    if result["overflowed"]:
        _remove_shards(shard_dir)
        raise overflow("a value is beyond the storage format's range")
    seconds = time.perf_counter() - start
    arr, labels, timing = assemble_shards(shard_dir)
    timing.update(seconds=seconds, images_per_s=len(labels) / max(seconds, 1e-9))  # process start-up included
    return arr, labels, timing


def extract_on_ranks(
    fabric: Any,
    extract: Callable,
    backbone: Any,
    dataset: Any,
    shard_dir: Path,
    *,
    overflow: type[BaseException] = OverflowError,
    **kwargs: Any,
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, float]]:
    """This process's part of a launcher-started extraction (every rank calls it with the same arguments;
    ``shard_dir`` on a filesystem all ranks see). Rank 0 gets the assembled ``(summaries, labels, timing)``,
    the other ranks ``(None, None, timing)``; every rank raises ``overflow`` when any rank's values went beyond
    the storage format."""
    start = time.perf_counter()
    result = _run(fabric, extract, backbone, dataset, str(shard_dir), kwargs, overflow)
    if result["overflowed"]:
        if fabric.global_rank == 0:
            _remove_shards(shard_dir)
        fabric.barrier()
        raise overflow("a value is beyond the storage format's range")
    if fabric.global_rank != 0:
        return None, None, result["timing"]
    arr, labels, timing = assemble_shards(shard_dir)
    seconds = time.perf_counter() - start
    timing.update(seconds=seconds, images_per_s=len(labels) / max(seconds, 1e-9))
    return arr, labels, timing


def _remove_shards(shard_dir: Path) -> None:
    for s in Path(shard_dir).glob("shard-*"):
        s.unlink(missing_ok=True)


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
    _remove_shards(shard_dir)
    return out, labels, {"seconds": 0.0, "images_per_s": 0.0, "num_images": total}
