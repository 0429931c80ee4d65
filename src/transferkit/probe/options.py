"""Options of the probe module that commands take (extraction, the probe grids' defaults, the logistic-regression
protocol), in a module that imports neither torch nor lightning, so a command's ``--help`` and argument errors
come back before those load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from transferkit.errors import UserError
from transferkit.utils.devices import PRECISIONS
from transferkit.utils.ranks import launched_world

#: precisions of the linear-probe grid's training matmuls (float16 would need loss scaling)
GRID_PRECISIONS = ("auto", "float32", "bfloat16")
#: strategies of a distributed extraction: it is data-parallel (every process holds the whole frozen backbone and
#: a block of the images), so Lightning's ``ddp_spawn`` (the command starts one process per device) or ``ddp``
#: (a launcher, torchrun, started the processes, on one node or several); ``auto`` picks the one that applies
EXTRACT_STRATEGIES = ("auto", "ddp_spawn", "ddp")
#: how stored summaries are kept on disk (``probe.cache.STORAGES`` maps them to numpy dtypes)
STORAGE_NAMES = ("float32", "float16", "bfloat16")

#: DINOv2's grid spans 1e-5 .. 0.1 in 13 steps (1-2-5); ours spans 1e-4 .. 1.0 in 9 half-decade steps: heads see
#: standardised features, which want larger steps than DINOv2's raw ones, and 9 heads cost 30% less than 13.
DEFAULT_LEARNING_RATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
#: L2 weight decays searched with them (``benchmarks/bench_probes.py`` measures the gain)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
#: the kNN protocol's neighbour counts and temperature (DINOv2's ``knn.py``)
DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


def resolve_mode(devices: int, num_nodes: int, strategy: str) -> str:
    """``single`` (one process), ``spawn`` (this command starts ``devices`` processes) or ``launched`` (a
    launcher started ``devices x num_nodes``); a combination that cannot work is a one-line error."""
    world = launched_world()
    if world > 1:
        if strategy == "ddp_spawn":
            raise UserError(
                f"--strategy ddp_spawn starts its own processes, but a launcher started this job ({world} "
                "processes, WORLD_SIZE): use --strategy ddp (or auto)"
            )
        if devices * num_nodes != world:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", devices))
            raise UserError(
                f"a launcher started {world} processes but --devices {devices} x --num_nodes {num_nodes} is "
                f"{devices * num_nodes}: pass --devices {local} --num_nodes {max(1, world // max(1, local))}"
            )
        return "launched"
    if strategy == "ddp":
        raise UserError(
            "--strategy ddp runs in processes a launcher started (torchrun ... transferkit ...); without one, use "
            "--strategy auto (this command starts one process per device)"
        )
    if num_nodes > 1:
        raise UserError(
            f"--num_nodes {num_nodes} needs the command started on every node by a launcher (torchrun --nnodes "
            f"{num_nodes} --nproc_per_node {devices} ... transferkit ... --num_nodes {num_nodes})"
        )
    return "spawn" if devices > 1 else "single"


@dataclass
class ExtractOptions:
    """How features are extracted and cached, as :func:`get_features` takes them: one definition for every
    command that extracts (extract, compare, rank, rank benchmark), whose CLI has these as top-level options.

    Args:
        cache_dir: cache root (default :func:`default_cache_dir`).
        batch_size: extraction batch size (default: the datamodule's ``eval_batch_size``).
        num_workers: DataLoader workers (default: the datamodule's).
        device: where the backbone runs (default: CUDA when available).
        precision: compute precision: ``auto`` (bfloat16 autocast where the device runs it fast: CUDA with
            bfloat16, CPUs with AVX-512-BF16 or AMX; float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``;
            the resolved one is part of the cache key and of the results.
        storage: how features are kept on disk: ``float16`` (half the bytes; a value beyond its range stores
            that entry in float32), ``bfloat16`` or ``float32``; part of the cache key.
        refresh_cache: re-extract even when cached (and overwrite the entry).
        progress: show progress bars.
        devices: extract with this many processes per node (one per device) through Lightning Fabric: the
            images are cut into one contiguous block per process and the entry equals a one-process one row
            for row.
        num_nodes: machines of a launcher-started job (``torchrun --nnodes``); the processes of the job are
            ``devices x num_nodes``, and the cache folder must be one that every node sees.
        strategy: ``auto`` (``ddp`` when a launcher started the processes, else ``ddp_spawn`` for
            ``devices`` > 1), ``ddp_spawn`` (this command starts the processes) or ``ddp`` (torchrun did).
        accelerator: Fabric accelerator (``auto``, ``cpu``, ``cuda``, ...) of a distributed extraction.
    """

    #: the CLI adds these fields as top-level options (``--batch_size``, not ``--extract.batch_size``)
    cli_flatten: ClassVar[bool] = True

    cache_dir: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    device: str | None = None
    precision: str = "auto"
    storage: str = "float16"
    refresh_cache: bool = False
    progress: bool = True
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision '{self.precision}'; choose one of {list(PRECISIONS)}")
        if self.storage not in STORAGE_NAMES:
            raise UserError(f"unknown --storage '{self.storage}'; choose one of {list(STORAGE_NAMES)}")
        for key in ("batch_size", "num_workers"):
            value = getattr(self, key)
            if value is not None and value < (1 if key == "batch_size" else 0):
                raise UserError(f"{key} must be >= {1 if key == 'batch_size' else 0}, got {value}")
        if self.devices < 1 or self.num_nodes < 1:
            raise UserError(
                f"--devices and --num_nodes must be >= 1, got {self.devices} and {self.num_nodes}"
            )
        if self.strategy not in EXTRACT_STRATEGIES:
            raise UserError(
                f"unknown --strategy '{self.strategy}'; extraction is data-parallel (every process holds the whole "
                f"frozen backbone): choose one of {list(EXTRACT_STRATEGIES)}"
            )

    def check_distributed(self) -> str:
        """:func:`resolve_mode` of these options in this process's environment (a command calls it before any
        work, so a combination that cannot run is a one-line error at once)."""
        return resolve_mode(self.devices, self.num_nodes, self.strategy)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`get_features`."""
        return {
            "cache_dir": self.cache_dir,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "device": self.device,
            "precision": self.precision,
            "storage": self.storage,
            "refresh": self.refresh_cache,
            "progress": self.progress,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": self.strategy,
            "accelerator": self.accelerator,
        }


#: DINOv2's ``eval/log_regression.py`` sweep: C = 10 ** linspace(-6, 5, 45)
LogRegTies = Literal["val_loss", "smallest_c"]
LOGREG_TIES: tuple[str, ...] = get_args(LogRegTies)
DEFAULT_C_POWERS: tuple[float, ...] = tuple(float(p) for p in np.linspace(-6.0, 5.0, 45))


@dataclass
class LogRegConfig:
    """The L-BFGS logistic-regression protocol (DINOv2's ``log_regression``), on cached features.

    Args:
        c_powers: the sweep of inverse regularisation strengths, as powers of ten (C = 10 ** p).
        max_iter: L-BFGS iterations per fit.
        tol: stop when the gradient's max-norm falls below this.
        normalize: standardise the features with the training mean/std first.
        refit: DINOv2 refits the chosen C on train + val before testing; False (the default) keeps the training
            data of every protocol the same (train only), so probes, kNN and fine-tunes compare on equal terms.
        ties: which C wins a tie in val top-1: ``val_loss`` (the default: the lower val loss, then the smaller C)
            or ``smallest_c`` (DINOv2's rule: the strongest regularisation; on the rank benchmark's small
            validation sets it lowered most of the test accuracies it changed, docs/compare.md).
    """

    c_powers: tuple[float, ...] = DEFAULT_C_POWERS
    max_iter: int = 1000
    tol: float = 1e-6
    normalize: bool = True
    refit: bool = False
    ties: LogRegTies = "val_loss"

    def check(self) -> None:
        if self.ties not in LOGREG_TIES:
            raise UserError(f"ties must be one of {', '.join(map(repr, LOGREG_TIES))}, got {self.ties!r}")
        if not self.c_powers:
            raise UserError("the logistic-regression sweep needs at least one C (c_powers)")
        if self.max_iter < 1 or not self.tol > 0:
            raise UserError(f"max_iter must be >= 1 and tol > 0, got {self.max_iter}, {self.tol}")
