"""LightningCLI with transferkit's conventions: run directories, metrics.json, ``--validate_only``.

Run directories come from :mod:`transferkit.runs`: ``fit`` claims a new ``<runs_dir>/<name>`` (``name-2``... when
taken) and writes its resolved config as ``config.yaml`` with ``name`` set to the run's folder name; ``fit
--ckpt_path last|best|PATH`` resumes ``<runs_dir>/<name>`` (or the run a checkpoint path lies in);
``validate``/``test``/``predict`` write into the run of their checkpoint (or ``<runs_dir>/<name>``) and save
their own config beside it as ``config.<subcommand>.yaml``, so ``config.yaml`` stays the fit config. Options
are never abbreviated, and a bad option is one line (:class:`~transferkit.errors.OneLineErrors`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, _get_module_type
from lightning.pytorch.cli import _InstantiatorFn as _LightningInstantiator
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden

from transferkit.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from transferkit.errors import OneLineErrors, UserError, user_error_in
from transferkit.runs import RunDir, check_run_name
from transferkit.tasks.protocol import DATA_LINKS, Task, check_task
from transferkit.utils.console import make_console
from transferkit.utils.ranks import refuse_training_under_launcher

log = logging.getLogger("transferkit")

#: the run folder rank 0 chose, handed to the processes Lightning's launcher starts for the other ranks
RUN_DIR_ENV = "TRANSFERKIT_RUN_DIR"


class TransferkitArgumentParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser with one-line usage errors."""


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run (rank zero, atomically): ``config.yaml`` for ``fit``,
    ``config.<subcommand>.yaml`` for the others."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(self, "_saved", False) or not trainer.is_global_zero:
            return
        text = self.parser.dump(self.config, skip_none=False)
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn (a str enum)
        command = None if stage == "fit" else stage
        RunDir(Path(trainer.default_root_dir)).write_config(text, command)
        self._saved = True


class RunStartMarker(Callback):
    """Marks the run started (``run.json``) when training, validation, testing or prediction begins; a run
    that fails before (while building the model) leaves no folder behind."""

    def _mark(self, trainer: Trainer) -> None:
        if trainer.is_global_zero and trainer.default_root_dir:
            RunDir(Path(trainer.default_root_dir)).mark_started()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark(trainer)


class InterruptCheckpoint(Callback):
    """On SIGTERM (a cluster pre-empting the job) or Ctrl-C during ``fit``: save ``checkpoints/last.ckpt``
    where training stopped, so ``--ckpt_path last`` resumes it; the command then exits non-zero (143 for
    SIGTERM). Lightning's own ``OnExceptionCheckpoint`` would also save on errors before training started."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.trainer.states import TrainerFn
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if (
            not isinstance(exception, SIGTERMException | KeyboardInterrupt)
            or trainer.state.fn != TrainerFn.FITTING
        ):
            return
        trainer.save_checkpoint(str(self.path))
        log.warning(
            "interrupted (%s): saved %s; resume with --ckpt_path last", type(exception).__name__, self.path
        )


class _LinkAwareInstantiator(_LightningInstantiator):
    """Lightning's module instantiator with two fixes to how linked values reach a task.

    - jsonargparse skips a link whose target the chosen class lacks (the detection task takes no
      ``num_classes``) but still reports it as applied, and Lightning would save it into the checkpoint's
      hyper-parameters, which then fail to load (``unexpected keyword argument``): only the linked values the
      class takes are recorded.
    - With ``--ckpt_path``, the checkpoint's own classes, vocabularies and sizes win over the datamodule's (a
      predict folder knows no classes; its layers must match the checkpoint's).

    Lightning has no option for either, hence the subclass.
    """

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        prefix = f"{self.key}.init_args."
        taken = {
            k: v
            for k, v in applied_instantiation_links.items()
            if not k.startswith(prefix) or k[len(prefix) :].split(".")[0] in kwargs
        }
        saved = getattr(self.cli, "checkpoint_hparams", {}) if self.key == "model" else {}
        for _, arg in DATA_LINKS:
            if arg in kwargs and saved.get(arg) is not None and kwargs[arg] != saved[arg]:
                log.info("%s: using the checkpoint's %s (the data's differs)", class_type.__name__, arg)
                kwargs[arg] = taken[prefix + arg] = saved[arg]
        return super().__call__(class_type, *args, applied_instantiation_links=taken, **kwargs)


def run_fit(
    model: dict[str, Any],
    data: dict[str, Any],
    *,
    epochs: int,
    device: str,
    progress: bool,
    seed: int,
    name: str,
    runs_dir: str | Path,
    limit_train_batches: int | float | None = None,
) -> Any:
    """``transferkit fit`` called from Python (compare's fine-tunes, the zoo's members): ``model`` and ``data`` as
    ``class_path``/``init_args`` dicts, one device, no sanity check or model summary; returns the LightningCLI."""
    refuse_training_under_launcher(f"the fit of '{name}'")
    trainer: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "gpu" if str(device).startswith("cuda") else "cpu",
        "devices": 1,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 5,
    }
    if limit_train_batches is not None:
        trainer["limit_train_batches"] = limit_train_batches
    argv = ["fit", f"--model={json.dumps(model)}", f"--data={json.dumps(data)}", f"--trainer={json.dumps(trainer)}",
            "--seed_everything", str(seed), "--name", name, "--runs_dir", str(runs_dir)]  # fmt: skip
    return run_lightning(argv)


def run_lightning(argv: list[str], from_sys_argv: bool = False) -> Any:
    """Run a LightningCLI subcommand (``argv[0]``) with transferkit's run-directory conventions."""
    # imported here so `transferkit --help` and the light commands start fast
    import transferkit.data.datamodule  # noqa: F401  (registers datamodules for short class_path names)
    import transferkit.tasks  # noqa: F401

    inherited = os.environ.get(RUN_DIR_ENV)
    try:
        # args=None lets LightningCLI read sys.argv itself; called from Python (tests, notebooks) it warns that
        # sys.argv holds other arguments, which is expected here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return TransferkitCLI(args=None if from_sys_argv else argv)
    except UserError:
        raise
    except Exception as e:  # errors from instantiating user classes arrive wrapped by jsonargparse
        cause = user_error_in(e)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)


class TransferkitCLI(LightningCLI):
    """``transferkit fit|validate|test|predict``: any task module, any datamodule, chosen by ``class_path``."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        self._started = time.time()
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            seed_everything_default=0,
            args=args,
            parser_class=TransferkitArgumentParser,
            parser_kwargs={
                "description": "transferkit: train, validate, test or predict with a YAML config",
                "allow_abbrev": False,
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name", type=str | None, default=None, help="run name (default: the config file's stem)"
        )
        parser.add_argument("--runs_dir", type=str, default="runs", help="folder holding run directories")
        parser.add_argument(
            "--validate_only",
            "--validate-only",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="check the config, data and model (one forward pass on one batch) without training",
        )
        # what the datamodule knows reaches the task's init arguments when both are built; a task without the
        # argument (or a datamodule without the attribute) skips the link
        for attr, arg in DATA_LINKS:
            parser.link_arguments(f"data.{attr}", f"model.init_args.{arg}", apply_on="instantiate")
        # a grounding datamodule tokenizes with the processor of the task's model
        parser.link_arguments("model.init_args.model_path", "data.init_args.processor_path", apply_on="parse")

    def _add_instantiators(self) -> None:
        for key, cls, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(
                _LinkAwareInstantiator(cli=self, key=key), _get_module_type(cls), subclasses=subclasses
            )

    # ------------------------------------------------------------------ run directory
    def _sub(self) -> Any:
        return self.config[self.subcommand]

    def _resolve_run_dir(self) -> Path:
        cfg = self._sub()
        runs_dir = Path(cfg.get("runs_dir") or "runs")
        name = cfg.get("name")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "run"
        name = check_run_name(name)
        ckpt = cfg.get("ckpt_path")
        inherited = os.environ.get(RUN_DIR_ENV)
        if inherited and (os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") != "0"):
            return Path(inherited)  # a process Lightning's launcher started for another rank
        if self._get(self.config, "validate_only"):
            return runs_dir / name  # nothing is written
        own = RunDir.of_checkpoint(ckpt) if ckpt and ckpt not in ("last", "best") else None
        if own is not None:
            run = own  # evaluating / resuming a run's own checkpoint
        elif self.subcommand == "fit" and not ckpt:
            run = RunDir.create(runs_dir, name, "fit")
        elif self.subcommand == "fit":
            if not (runs_dir / name).is_dir():
                raise UserError(
                    f"--ckpt_path {ckpt} resumes runs/<name>, but there is no run '{runs_dir / name}'; pass the "
                    "run's --name (and --runs_dir)"
                )
            run = RunDir(runs_dir / name)
        else:
            run = RunDir.open_or_create(runs_dir, name, self.subcommand)
        if ckpt:
            cfg["ckpt_path"] = str(self._checkpoint_file(run, str(ckpt)))
        cfg["name"] = run.name  # the saved config names the run it belongs to
        os.environ[RUN_DIR_ENV] = str(run.path)
        return run.path

    @staticmethod
    def _checkpoint_file(run: RunDir, ckpt: str) -> Path:
        """``best``/``last`` as the run's checkpoint file, a path as itself; either must exist (one-line error
        naming the run's checkpoints otherwise, before anything is built)."""
        if ckpt in ("best", "last") or Path(ckpt).expanduser().is_file():
            return run.checkpoint(ckpt) if ckpt in ("best", "last") else Path(ckpt).expanduser()
        run.checkpoint(ckpt)  # raises the UserError naming what the run has
        raise AssertionError("unreachable")

    def _parse_ckpt_path(self) -> None:
        """Resolve the run folder and ``--ckpt_path`` (``best``/``last`` become the run's files) first, then as
        Lightning does: the checkpoint's hyper-parameters update the model config (also kept in
        ``checkpoint_hparams``, see :class:`_LinkAwareInstantiator`). The checkpoint is memory-mapped: only
        its hyper-parameters are read."""
        self.subcommand = self.config["subcommand"]  # Lightning sets it only after this hook
        check_trainer_values(self._get(self.config, "trainer", default={}) or {})
        self.run_dir = self._resolve_run_dir()
        self.checkpoint_hparams: dict[str, Any] = {}
        ckpt = self._sub().get("ckpt_path")
        if not ckpt or not Path(ckpt).is_file():
            return
        hparams = dict(read_checkpoint(ckpt, mmap=True).get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        self.checkpoint_hparams = dict(hparams)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({self.subcommand: {"model": hparams}}, self.config)

    @property
    def task(self) -> Task:
        """The model, checked against the :class:`~transferkit.tasks.protocol.Task` contract."""
        return check_task(self.model)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        assert self.run_dir is not None
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        if self._get(self.config, "validate_only"):
            config.update(logger=False, enable_checkpointing=False)
        else:
            config["default_root_dir"] = str(self.run_dir)
            extra.append(RunStartMarker())
            if config.get("logger") in (None, True):
                # one version folder per attempt, so a resumed run never overwrites the earlier logs
                log_dir = self.run_dir / "log"
                version = f"version_{len(list(log_dir.glob('version_*'))) if log_dir.is_dir() else 0}"
                config["logger"] = [
                    CSVLogger(str(self.run_dir), name="log", version=version),
                    TensorBoardLogger(str(self.run_dir), name="log", version=version),
                ]
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                config["plugins"] = [*plugins, AtomicCheckpointIO()]
            extra.append(InterruptCheckpoint(self.run_dir / "checkpoints" / "last.ckpt"))
            callbacks = config.get("callbacks") or []
            has_ckpt = any(isinstance(c, ModelCheckpoint) for c in callbacks)
            if config.get("enable_checkpointing", True) is not False and not has_ckpt:
                monitor, mode = self.task.checkpoint_monitor
                ckpt_dir = str(self.run_dir / "checkpoints")
                # best.ckpt by the task's metric; last.ckpt after every epoch (Lightning's save_last only
                # refreshes it when a top-k checkpoint was saved, which would make resuming lose epochs)
                extra += [
                    ModelCheckpoint(
                        ckpt_dir,
                        "best",
                        monitor=monitor,
                        mode=mode,
                        save_top_k=1,
                        enable_version_counter=False,
                    ),
                    ModelCheckpoint(
                        ckpt_dir, "last", monitor=None, save_top_k=1, enable_version_counter=False
                    ),
                ]
        self.task  # noqa: B018  (a model that is no transferkit task is one line, before the trainer is built)
        try:
            return self._instantiate_trainer(config, extra)
        except (MisconfigurationException, ValueError) as e:  # Lightning's own checks of trainer values
            raise UserError(f"trainer: {str(e).splitlines()[0]}") from None

    # ------------------------------------------------------------------ subcommands
    def _run_subcommand(self, subcommand: str) -> None:
        if self._get(self.config, "validate_only"):
            self.dry_run()
            return
        super()._run_subcommand(subcommand)

    def dry_run(self) -> dict[str, Any]:
        """Build data and model, push one batch through the model, print what would run. No training."""
        dm, model = self.datamodule, self.model
        if dm is None:
            raise UserError("--validate_only needs a datamodule in the config (the 'data' section)")
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        task = self.task
        model.configure_model()
        model.eval()
        with torch.no_grad():
            step = task.dry_run_step(batch)
        summary = {
            "model": type(model).__name__,
            "data": type(dm).__name__,
            **step,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "run_dir": str(self.run_dir),
        }
        if hasattr(dm, "describe"):
            summary["dataset"] = dm.describe()
        from rich.table import Table

        table = Table(title="config is valid (nothing was trained)")
        table.add_column("what")
        table.add_column("value")
        for k, v in summary.items():
            table.add_row(k, str(v))
        make_console().print(table)
        return summary

    def after_fit(self) -> None:
        """Evaluate the best checkpoint on val and test; write ``metrics.json``."""
        ckpt_cb = self.trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
        if best is None:
            log.warning("no best checkpoint was saved; evaluating the final weights")
        # tasks without evaluation steps (self-supervised ones) have nothing to validate or test
        if is_overridden("validation_step", self.model):
            self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best)
        if is_overridden("test_step", self.model):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        self.write_metrics(best_checkpoint=best)

    def after_validate(self) -> None:
        self.write_metrics()

    def after_test(self) -> None:
        self.write_metrics()

    def write_metrics(self, **extra: Any) -> None:
        if not self.trainer.is_global_zero:
            return
        task = self.task
        final = task.final_metrics
        metrics: dict[str, Any] = {**final, **task.describe()}
        metrics.update(
            run=self.run_dir.name,
            command=self.subcommand,
            epochs=self.trainer.current_epoch,
            global_step=self.trainer.global_step,
            wall_time_s=round(time.time() - self._started, 2),
            **extra,
        )
        RunDir(self.run_dir).update_metrics(metrics)
        for split in ("val", "test"):
            if split in final:
                log.info("%s: %s", split, {k: v for k, v in final[split].items() if not isinstance(v, dict)})
        log.info("wrote %s", self.run_dir / "metrics.json")


#: trainer values Lightning accepts but that cannot mean anything: key -> (check, allowed range)
_TRAINER_RANGES: dict[str, tuple[Any, str]] = {
    "max_epochs": (lambda v: v >= -1, "an integer >= -1 (-1: no limit)"),
    "min_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "max_steps": (lambda v: v >= -1, "an integer >= -1 (-1: no limit)"),
    "min_steps": (lambda v: v >= 0, "an integer >= 0"),
    "accumulate_grad_batches": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_clip_val": (lambda v: v >= 0, "a number >= 0"),
    "log_every_n_steps": (lambda v: v >= 1, "an integer >= 1"),
    "check_val_every_n_epoch": (lambda v: v >= 1, "an integer >= 1"),
    "val_check_interval": (lambda v: v > 0, "a number > 0 (a fraction of an epoch, or batches)"),
    "num_sanity_val_steps": (lambda v: v >= -1, "an integer >= -1"),
}


def check_trainer_values(trainer: Any) -> None:
    """One line naming ``trainer.<key>`` and its allowed range for a value out of range (before anything is built)."""
    for key, (ok, allowed) in _TRAINER_RANGES.items():
        value = trainer.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not ok(value):
            raise UserError(f"trainer.{key} must be {allowed}, got {value}")
