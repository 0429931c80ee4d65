"""Which process of a launcher-started job this is, from the environment (no torch import).

A launcher (``torchrun``, or ``srun`` running torchrun) runs the whole command in every process; only the
extraction is shared out (:mod:`transferkit.probe.distributed`). Everything else a command writes (its run
folder, the results table, the console) comes from global rank 0 alone. The variables are the ones torchrun sets
and Lightning's ``TorchElasticEnvironment`` reads (``WORLD_SIZE``, ``RANK``, ``LOCAL_WORLD_SIZE``).
"""

from __future__ import annotations

import os


def launched_world() -> int:
    """Processes a launcher started for this job (1 when none did)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    """This process's rank in a launcher-started job (0 otherwise)."""
    return int(os.environ.get("RANK", "0")) if launched_world() > 1 else 0


def is_rank_zero() -> bool:
    """Whether this process writes the command's outputs (always, without a launcher)."""
    return global_rank() == 0


def refuse_training_under_launcher(what: str) -> None:
    """One-line error when ``what`` (a Lightning fit inside a command) would run in a launcher-started job: under
    a launcher only extraction is distributed; ``transferkit fit`` is the command that trains on many devices."""
    from transferkit.errors import UserError

    if launched_world() > 1:
        raise UserError(
            f"{what} trains in one process, but a launcher started {launched_world()} (WORLD_SIZE): run this "
            "command without torchrun, or train on many devices with `transferkit fit` under the launcher"
        )
