"""Run directories: the one place that creates, writes and re-opens ``<runs_dir>/<name>/``.

A run directory holds what one command produced::

    runs/<name>/
        run.json          who made it (command, time, host, pid): written first, exclusively
        config.yaml       the resolved config of the command that made the run (re-run it with --config)
        config.<cmd>.yaml the config of a later command on the same run (test, predict, evaluate, export...)
        metrics.json      final numbers, machine-readable: one top-level section per command
        report.md/.html   the report (:mod:`transferkit.report`), one replaceable section per producer
        checkpoints/      best.ckpt / last.ckpt (``transferkit fit``)

:meth:`RunDir.create` claims a new folder atomically: ``name``, else ``name-2``, ``name-3``... Two runs
started at once with the same name always get two folders (an exclusive ``mkdir`` plus an exclusive create of
``run.json``). :meth:`RunDir.open` re-opens an existing run; a run's model and data are rebuilt by
:func:`transferkit.lightning_cli.load_run` through the parser that made them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import UserError
from transferkit.utils.io import atomic_write_json, atomic_write_text, file_lock
from transferkit.utils.ranks import global_rank, is_rank_zero

_COMMAND_CONFIG: ContextVar[str | None] = ContextVar("transferkit_command_config", default=None)
_CREATED: ContextVar[list[RunDir] | None] = ContextVar("transferkit_created_runs", default=None)

RUN_MARKER = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_ALIASES = ("best", "last")


@contextmanager
def command_config(text: str | None) -> Iterator[None]:
    """Make ``text`` (the resolved YAML of the running command) what :meth:`RunDir.write_config` writes."""
    token = _COMMAND_CONFIG.set(text)
    try:
        yield
    finally:
        _COMMAND_CONFIG.reset(token)


@contextmanager
def discard_unused_runs_on_error() -> Iterator[None]:
    """Run folders created inside the block by a command that then fails before writing any result (only
    ``run.json`` and configs in them) are removed, so a mistyped option does not push the next run to
    ``name-2``."""
    created: list[RunDir] = []
    token = _CREATED.set(created)
    try:
        yield
    except BaseException:
        for run in created:
            run.discard_if_unused()
        raise
    finally:
        _CREATED.reset(token)


def check_run_name(name: str) -> str:
    """``name`` if it can be a folder name under ``runs_dir`` (no path separator, not ``.``/``..``)."""
    name = str(name).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"run name {name!r} cannot be a folder name; use letters, digits, '-', '_' or '.'")
    return name


def deep_merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``updates``, merging nested dicts key by key (other values are replaced)."""
    out = dict(base)
    for k, v in updates.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class RunDir:
    """A run directory (see the module docstring)."""

    path: Path

    # ------------------------------------------------------------------ creating and opening
    @classmethod
    def create(cls, runs_dir: str | Path, name: str, command: str) -> RunDir:
        """Claim a new run folder ``runs_dir/name`` (or ``name-2``, ``name-3``, ... when taken), atomically.

        A folder is taken when it holds anything; an empty folder (made by hand) may be claimed. The claim is
        the exclusive creation of ``run.json``, so concurrent callers never share a folder.
        """
        name = check_run_name(name)
        root = Path(runs_dir).expanduser()
        if not is_rank_zero():  # a launcher runs the command in every process: rank 0's run is the run
            root = Path(tempfile.mkdtemp(prefix=f"transferkit-rank{global_rank()}-"))
            atexit.register(shutil.rmtree, root, True)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the runs folder '{root}' ({e.strerror}); pass --runs_dir"
            ) from None
        i = 1
        while True:
            candidate = root / (name if i == 1 else f"{name}-{i}")
            i += 1
            try:
                os.mkdir(candidate)
            except FileExistsError:
                if not candidate.is_dir() or any(candidate.iterdir()):
                    continue
            try:
                fd = os.open(candidate / RUN_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            marker = {
                "name": candidate.name,
                "command": command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            with os.fdopen(fd, "w") as fh:
                json.dump(marker, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            run = cls(candidate)
            created = _CREATED.get()
            if created is not None:
                created.append(run)
            return run

    def mark_started(self) -> None:
        """Record in ``run.json`` that the work began (training, evaluation or prediction started)."""
        marker = self.marker()
        if "started" not in marker:
            atomic_write_json(
                self.path / RUN_MARKER, {**marker, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            )

    def discard_if_unused(self) -> bool:
        """Remove the folder when it holds no result: nothing but ``run.json``, configs, locks and empty
        folders, plus logger files when the work never started (a trainer that failed while building the
        model). Returns whether it was removed."""
        import shutil

        keep = {RUN_MARKER, CONFIG_FILE, ".metrics.lock"}
        started = "started" in self.marker()
        for p in self.path.rglob("*"):
            if not started and p.relative_to(self.path).parts[0] == "log":
                continue
            if p.is_file() and not (p.name in keep or (p.name.startswith("config.") and p.suffix == ".yaml")):
                return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    @classmethod
    def open(cls, path: str | Path, *, require_config: bool = True) -> RunDir:
        """An existing run folder; with ``require_config`` it must hold ``config.yaml``."""
        run = Path(path).expanduser()
        if not run.is_dir():
            raise UserError(
                f"no run directory '{path}'; runs are written under runs/<name> by transferkit fit, compare, "
                "rank ..."
            )
        if require_config and not (run / CONFIG_FILE).is_file():
            raise UserError(f"'{path}' has no {CONFIG_FILE}, so it is not a transferkit run directory")
        return cls(run)

    @classmethod
    def open_or_create(cls, runs_dir: str | Path, name: str, command: str) -> RunDir:
        """``runs_dir/name`` when it exists (a later command on that run), else a new run."""
        path = Path(runs_dir).expanduser() / check_run_name(name)
        if path.is_dir():
            return cls(path)
        return cls.create(runs_dir, name, command)

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run a ``<run>/checkpoints/<file>.ckpt`` belongs to, else None."""
        p = Path(ckpt).expanduser()
        if p.is_file() and p.parent.name == "checkpoints" and p.parent.parent.is_dir():
            return cls(p.parent.parent)
        return None

    @property
    def name(self) -> str:
        return self.path.name

    def marker(self) -> dict[str, Any]:
        """``run.json`` (empty for runs written before it existed)."""
        return _read_json(self.path / RUN_MARKER)

    # ------------------------------------------------------------------ config
    def config_file(self, command: str | None = None) -> Path:
        """``config.yaml`` (the run's own command, ``command=None``) or ``config.<command>.yaml``."""
        return self.path / (CONFIG_FILE if command is None else f"config.{command}.yaml")

    def write_config(self, text: str | None = None, command: str | None = None) -> Path | None:
        """Write a resolved YAML config: the run's own (``command=None``) or a later command's. ``text`` None:
        the running command's config (:func:`command_config`), when a CLI set one."""
        text = _COMMAND_CONFIG.get() if text is None else text
        if text is None:
            return None
        return atomic_write_text(self.config_file(command), text)

    def read_config(self, command: str | None = None) -> dict[str, Any]:
        import yaml

        path = self.config_file(command)
        try:
            return yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"'{self.path}' has no {path.name}") from None
        except yaml.YAMLError as e:
            raise UserError(
                f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix or remove it"
            ) from None

    # ------------------------------------------------------------------ metrics
    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` (empty when missing or unreadable)."""
        return _read_json(self.metrics_file)

    def update_metrics(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into ``metrics.json`` (nested dicts key by key), under a lock, atomically."""
        with file_lock(self.path / ".metrics.lock"):
            metrics = deep_merge(self.read_metrics(), updates)
            atomic_write_json(self.metrics_file, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[str]:
        """Sorted names of the ``.ckpt`` files in ``checkpoints/``."""
        folder = self.path / "checkpoints"
        return sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []

    def checkpoint(self, ckpt_path: str = "best") -> Path:
        """``checkpoints/{best,last}.ckpt`` for ``best``/``last``, else ``ckpt_path`` as a path; it must exist."""
        if ckpt_path in CHECKPOINT_ALIASES:
            path = self.path / "checkpoints" / f"{ckpt_path}.ckpt"
        else:
            path = Path(ckpt_path).expanduser()
        if not path.is_file():
            have = self.checkpoints()
            raise UserError(
                f"no checkpoint '{path}'"
                + (f"; the run has {', '.join(have)}" if have else "; the run has none")
                + " (train with transferkit fit, or pass --ckpt_path best|last|PATH)"
            )
        return path


@dataclass
class LoadedRun:
    """A run with its task module loaded from a checkpoint (eval mode, CPU unless moved).

    The model comes from Lightning's ``load_from_checkpoint`` (which re-instantiates a LightningCLI-made module
    through the CLI's own ``instantiate_module``); the datamodule, on first use, from the ``data`` section of
    ``config.yaml`` through ``lightning.pytorch.cli.instantiate_class``.
    """

    run: RunDir
    checkpoint: Path
    model: Any
    config: dict[str, Any]
    #: the task's hyper-parameters as trained (the checkpoint's, before the load-time ``pretrained: false``)
    hparams: dict[str, Any] = field(default_factory=dict)
    _datamodule: Any = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def task_class(self) -> str:
        """``model.class_path`` of the run's config (the task module's own import path without one)."""
        model = self.config.get("model")
        if isinstance(model, dict) and model.get("class_path"):
            return str(model["class_path"])
        return f"{type(self.model).__module__}.{type(self.model).__qualname__}"

    @property
    def datamodule(self) -> Any:
        """The run's datamodule, rebuilt from ``config.yaml`` (``data.class_path`` + ``init_args``)."""
        if self._datamodule is None:
            from lightning.pytorch.cli import instantiate_class

            data = self.config.get("data") or {}
            if not isinstance(data, dict) or "class_path" not in data:
                raise UserError(f"{self.run.config_file()} has no data.class_path; cannot rebuild the data")
            try:
                dm = instantiate_class((), data)
            except UserError as e:
                raise UserError(f"cannot rebuild the data of run '{self.name}': {e}") from None
            except (ImportError, AttributeError):
                raise UserError(
                    f"cannot import '{data['class_path']}' named in {self.run.config_file()}"
                ) from None
            dm.prepare_data()
            dm.setup("test")
            self._datamodule = dm
        return self._datamodule

    @property
    def class_names(self) -> list[str]:
        names = self.model.hparams.get("class_names") or self.datamodule.class_names
        return [str(n) for n in names]

    def checkpoint_key(self) -> str:
        """Identity of the checkpoint file (path, size, modification time)."""
        st = self.checkpoint.stat()
        return f"{self.checkpoint.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def cache_key(self, split: str, extra: str = "") -> str:
        """Key of cached predictions on ``split``: the checkpoint and the split's data fingerprint."""
        import hashlib

        blob = f"{self.checkpoint_key()}|{self.datamodule.fingerprint(split)}|{extra}".encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()


def load_run(run_dir: str | Path, ckpt_path: str = "best", device: str = "cpu") -> LoadedRun:
    """Open ``run_dir`` and load its task module from ``ckpt_path`` (``best``, ``last`` or a path).

    The task class is ``model.class_path`` of ``config.yaml``. A checkpoint with every tensor rebuilds a
    pretrained backbone with ``pretrained: false`` (nothing is downloaded); one saved without its frozen weights
    (:mod:`transferkit.tasks.frozen`) loads them from the pretrained source and checks their digest.
    """
    import importlib

    from lightning.pytorch import LightningModule

    run = RunDir.open(run_dir)
    config = run.read_config()
    class_path = (
        (config.get("model") or {}).get("class_path") if isinstance(config.get("model"), dict) else None
    )
    if not class_path:
        raise UserError(f"{run.config_file()} has no model.class_path; it was not written by transferkit fit")
    module_name, _, cls_name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"cannot import '{class_path}' named in {run.config_file()}") from None
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise UserError(f"'{class_path}' in {run.config_file()} is not a LightningModule")
    ckpt = run.checkpoint(ckpt_path)
    from transferkit.checkpoint_io import read_checkpoint

    raw = read_checkpoint(ckpt, mmap=True)
    hp = raw.get("hyper_parameters") or {}
    # a checkpoint without its frozen weights rebuilds them from the pretrained source (transferkit.tasks.frozen)
    complete = "frozen_weights" not in raw
    del raw
    overrides: dict[str, Any] = {}
    if complete and isinstance(hp.get("backbone"), dict) and hp["backbone"].get("pretrained"):
        overrides["backbone"] = {**hp["backbone"], "pretrained": False}
    model = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, **overrides)
    from transferkit.utils.devices import resolve_device

    model.eval().to(resolve_device(device))
    return LoadedRun(run, ckpt, model, config, dict(hp))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
