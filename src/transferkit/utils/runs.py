"""Checkpoints of a run directory: ``runs/<name>/checkpoints/{best,last}.ckpt`` from ``transferkit fit``."""

from __future__ import annotations

from pathlib import Path


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``<run_dir>/checkpoints/{best,last}.ckpt`` for ``best``/``last``, else ``checkpoint`` as a path
    (not checked to exist)."""
    if checkpoint in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    return Path(checkpoint).expanduser()


def run_checkpoints(run_dir: Path) -> list[str]:
    """Sorted names of the ``.ckpt`` files in ``<run_dir>/checkpoints`` (empty when there is none)."""
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
