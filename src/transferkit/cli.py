"""The ``transferkit`` command.

``fit``/``validate``/``test``/``predict`` go through LightningCLI (typed YAML configs, ``--print_config``,
dotted overrides, ``class_path``/``init_args``); every other command lives in ``transferkit.commands.<name>``
and exposes ``main(argv) -> int``.

Every run is a directory ``<runs_dir>/<name>/`` holding the resolved ``config.yaml``, ``metrics.json``,
``log/`` (CSV + TensorBoard) and ``checkpoints/`` (``best.ckpt`` + ``last.ckpt``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from transferkit.errors import UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
#: other commands: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("transferkit.commands.data", "dataset tools: check, make-shapes, convert"),
    "backbones": ("transferkit.commands.backbones", "list the registered backbones"),
    "extract": ("transferkit.commands.extract", "run a frozen backbone once over a dataset, cache features"),
    "compare": ("transferkit.commands.compare", "fair comparison of backbones: probes, kNN, report"),
    "rank": ("transferkit.commands.rank", "rank backbones for a dataset without fine-tuning them"),
    "evaluate": ("transferkit.commands.evaluate", "full evaluation of a run: metrics, curves, robustness"),
    "analyze": (
        "transferkit.commands.analyze",
        "feature/weight/activation/attention/loss-landscape analysis",
    ),
    "export": ("transferkit.commands.export", "export a run to ONNX / HF / TorchScript with parity checks"),
    "serve": ("transferkit.commands.serve", "serve an exported artifact over HTTP (FastAPI)"),
}

log = logging.getLogger("transferkit")


def _usage() -> str:
    lines = ["usage: transferkit <command> [options]", "", "commands:"]
    lines += [
        f"  {c:<10} Lightning {c} (--config YAML, --print_config, --validate_only)"
        for c in LIGHTNING_COMMANDS
    ]
    lines += [f"  {c:<10} {help_}" for c, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'transferkit <command> --help' for a command's options."]
    return "\n".join(lines)


def setup_logging() -> None:
    """INFO messages of transferkit's own loggers on stderr (``TRANSFERKIT_LOG=DEBUG`` for more)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(os.environ.get("TRANSFERKIT_LOG", "INFO"))
        log.propagate = False
    # Lightning prints an advertisement for a cloud logger on every Trainer; it says nothing about the run
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_cloud_logger_tip)


def _drop_cloud_logger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transferkit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())  # noqa: T201
        return 0
    if argv[0] in ("-V", "--version"):
        from transferkit import __version__

        print(f"transferkit {__version__}")  # noqa: T201
        return 0
    command = argv[0]
    try:
        if command in LIGHTNING_COMMANDS:
            run_lightning(argv)
            return 0
        if command in COMMANDS:
            try:
                module = importlib.import_module(COMMANDS[command][0])
            except ModuleNotFoundError as e:
                if e.name != COMMANDS[command][0]:
                    raise
                raise UserError(f"'transferkit {command}' is not available in this version") from None
            return int(module.main(argv[1:]) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201
        return 2
    print(f"error: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)  # noqa: T201
    return 2


def run_lightning(argv: list[str]) -> Any:
    """Run a LightningCLI subcommand with transferkit's run-directory conventions."""
    # imported here so `transferkit --help` and the light commands start fast
    import transferkit.data  # noqa: F401  (registers datamodules for short class_path names)
    import transferkit.tasks  # noqa: F401
    from transferkit.lightning_cli import TransferkitCLI

    try:
        # args=None lets LightningCLI read sys.argv itself; called from Python (tests, notebooks) it warns that
        # sys.argv holds other arguments, which is expected here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return TransferkitCLI(args=None if argv == sys.argv[1:] else argv)
    except UserError:
        raise
    except Exception as e:  # errors from instantiating user classes arrive wrapped by jsonargparse
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def unique_run_dir(runs_dir: Path, name: str) -> Path:
    """``runs_dir/name``, or ``name-2``, ``name-3``... when that folder already holds a run."""
    candidate, i = runs_dir / name, 2
    while candidate.exists() and any(candidate.iterdir()):
        candidate, i = runs_dir / f"{name}-{i}", i + 1
    return candidate


if __name__ == "__main__":
    sys.exit(main())
