"""Checkpoint files that are never left half-written, and a resume from a broken one that says so.

Lightning's ``TorchCheckpointIO`` saves through fsspec: with ``$TMPDIR`` on another filesystem its final move
copies into the truncated destination, so a kill during the copy leaves ``last.ckpt`` at 0 bytes and the
previous good checkpoint gone. :class:`AtomicCheckpointIO` writes into a temporary file in the checkpoint's own
folder, fsyncs it, renames it over the target and fsyncs the folder (:func:`~transferkit.utils.io.atomic_writer`);
loading a truncated or unreadable file is one line naming the run's other checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from transferkit.errors import UserError
from transferkit.utils.io import atomic_writer


def unreadable_checkpoint(path: Path, error: Exception) -> UserError:
    """The one-line error for a checkpoint file that cannot be read, naming the folder's other checkpoints."""
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path and p.stat().st_size > 0)
    hint = f"; the folder also has {', '.join(others)}: pass one with --ckpt_path" if others else ""
    reason = str(error).splitlines()[0] if str(error) else "no message"
    size = path.stat().st_size if path.exists() else 0
    return UserError(
        f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}; {size} bytes){hint}"
    )


def read_checkpoint(path: str | Path, **load_kwargs: Any) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True, **load_kwargs)`` with a one-line error for a
    missing, truncated or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, **{"map_location": "cpu", "weights_only": True, **load_kwargs})
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... on a broken file
        raise unreadable_checkpoint(path, e) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local saves and one-line load errors (module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own path
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise unreadable_checkpoint(Path(path), e) from None
