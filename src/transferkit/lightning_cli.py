"""LightningCLI with transferkit's conventions: run directories, metrics.json, ``--validate_only``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden

from transferkit.cli import unique_run_dir
from transferkit.errors import UserError
from transferkit.utils.console import make_console
from transferkit.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("transferkit")


class RunConfigSaver(SaveConfigCallback):
    """Writes the fully resolved config to ``<run>/config.yaml`` (rank zero, atomically)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(self, "_saved", False) or not trainer.is_global_zero:
            return
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(Path(trainer.default_root_dir) / "config.yaml", text)
        self._saved = True


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
            parser_kwargs={"description": "transferkit: train, validate, test or predict with a YAML config"},
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

    # ------------------------------------------------------------------ run directory
    def _sub(self) -> Any:
        return self.config[self.subcommand]

    def _resolve_run_dir(self) -> Path:
        cfg = self._sub()
        runs_dir = Path(cfg.get("runs_dir") or "runs")
        ckpt = cfg.get("ckpt_path")
        if (
            ckpt
            and ckpt not in ("last", "best")
            and Path(ckpt).is_file()
            and Path(ckpt).parent.name == "checkpoints"
        ):
            return Path(ckpt).parent.parent  # evaluating / resuming a run's own checkpoint
        name = cfg.get("name")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "run"
        if self.subcommand == "fit" and not ckpt:
            return unique_run_dir(runs_dir, name)
        return runs_dir / name

    def before_instantiate_classes(self) -> None:
        self.run_dir = self._resolve_run_dir()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        assert self.run_dir is not None
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        if self._get(self.config, "validate_only"):
            config.update(logger=False, enable_checkpointing=False)
        else:
            config["default_root_dir"] = str(self.run_dir)
            if config.get("logger") in (None, True):
                # one version folder per attempt, so a resumed run never overwrites the earlier logs
                log_dir = self.run_dir / "log"
                version = f"version_{len(list(log_dir.glob('version_*'))) if log_dir.is_dir() else 0}"
                config["logger"] = [
                    CSVLogger(str(self.run_dir), name="log", version=version),
                    TensorBoardLogger(str(self.run_dir), name="log", version=version),
                ]
            callbacks = config.get("callbacks") or []
            has_ckpt = any(isinstance(c, ModelCheckpoint) for c in callbacks)
            if config.get("enable_checkpointing", True) is not False and not has_ckpt:
                monitor, mode = getattr(self.model, "checkpoint_monitor", (None, "min"))
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
        return self._instantiate_trainer(config, extra)

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
        if hasattr(model, "bind_datamodule"):  # before the loader: a task may hand the data its tokenizer
            model.bind_datamodule(dm)
        batch = next(iter(dm.train_dataloader()))
        model.configure_model()
        model.eval()
        with torch.no_grad():
            if hasattr(model, "dry_run_step"):  # tasks whose batches are not images describe their own step
                step = model.dry_run_step(batch)
            else:
                images = batch[0] if isinstance(batch, list | tuple) else batch
                out = model(images[:2])
                step = {
                    "batch_images": list(images.shape),
                    "output": list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__,
                }
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
        path = self.run_dir / "metrics.json"
        metrics: dict[str, Any] = {}
        if path.is_file():
            import json

            try:
                metrics = json.loads(path.read_text())
            except ValueError:
                metrics = {}
        final = getattr(self.model, "final_metrics", {}) or {}
        metrics.update(final)
        if hasattr(self.model, "describe"):
            metrics.update(self.model.describe())
        metrics.update(
            run=self.run_dir.name,
            command=self.subcommand,
            epochs=self.trainer.current_epoch,
            global_step=self.trainer.global_step,
            wall_time_s=round(time.time() - self._started, 2),
            **extra,
        )
        atomic_write_json(path, metrics)
        for split in ("val", "test"):
            if split in final:
                log.info("%s: %s", split, {k: v for k, v in final[split].items() if not isinstance(v, dict)})
        log.info("wrote %s", path)
