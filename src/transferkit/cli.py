"""The ``transferkit`` command: one CLI, two engines.

- ``fit``/``validate``/``test``/``predict`` go through LightningCLI (:mod:`transferkit.lightning_cli`): typed YAML
  configs, ``class_path``/``init_args``, ``--print_config``, dotted overrides.
- Every other command is a typed Python function (its parameters are dataclasses and plain types) in
  :mod:`transferkit.commands`, listed in :data:`COMMANDS` (name -> ``module:function``, litgpt-style). Its
  jsonargparse parser is built from the function's signature and docstring when the command runs (so
  ``transferkit --help`` imports nothing heavy): every command has ``--config``, ``--print_config`` and
  dotted overrides (``--probe.epochs 20``); a ``DataSpec`` parameter becomes every
  ``ImageClassificationDataModule`` option (:class:`~transferkit.data.options.DataOptions`, torch-free) under
  ``--data.*`` plus ``--data.classes``, with the ``--data X``
  shorthand of :func:`transferkit.data.spec.expand_data_shorthand`.

Abbreviated options are refused; an unknown option is one line naming it and its closest valid keys. Any
:class:`~transferkit.errors.UserError` prints as ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from transferkit.errors import OneLineErrors, UserError, user_error_in
from transferkit.utils.ranks import is_rank_zero

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
#: command -> (target, one-line help); a target is ``module:function`` or {subcommand: target}, where the
#: subcommand "" is what the bare command runs
COMMANDS: dict[str, tuple[str | dict[str, str], str]] = {
    "compare": ("transferkit.commands.compare:compare", "fair comparison of backbones: probes, kNN, report"),
    "extract": (
        "transferkit.commands.extract:extract",
        "run frozen backbones once over a dataset, cache features",
    ),
    "rank": (
        {
            "": "transferkit.commands.rank:rank",
            "benchmark": "transferkit.commands.rank:benchmark",
            "zoo": "transferkit.commands.rank:zoo",
            "train": "transferkit.commands.rank:train",
            "evaluate": "transferkit.commands.rank:evaluate",
        },
        "rank backbones for a dataset without fine-tuning them (subcommands: benchmark, zoo, train, evaluate)",
    ),
    "evaluate": (
        "transferkit.commands.evaluate:evaluate",
        "full evaluation of a run: metrics, curves, robustness",
    ),
    "analyze": (
        "transferkit.commands.analyze:analyze",
        "feature/weight/activation/attention/landscape analysis",
    ),
    "export": (
        "transferkit.commands.export:export",
        "export a run to ONNX / HF / TorchScript with parity checks",
    ),
    "serve": ("transferkit.commands.serve:serve", "serve an exported artifact over HTTP (FastAPI)"),
    "data": (
        {
            "check": "transferkit.commands.data:check",
            "make-shapes": "transferkit.commands.data:make_shapes",
            "convert": "transferkit.commands.data:convert",
        },
        "dataset tools: check, make-shapes, convert",
    ),
    "backbones": ("transferkit.commands.backbones:backbones", "list the registered backbones"),
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
        # under a launcher every process runs the command; rank 0 speaks, the others only warn
        log.setLevel(os.environ.get("TRANSFERKIT_LOG", "INFO") if is_rank_zero() else "WARNING")
        log.propagate = False
    # Lightning prints an advertisement for a cloud logger on every Trainer; it says nothing about the run
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_cloud_logger_tip)


def _drop_cloud_logger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transferkit`` console script; returns the exit status."""
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
    from transferkit.runs import discard_unused_runs_on_error

    try:
        with discard_unused_runs_on_error():
            if command in LIGHTNING_COMMANDS:
                from transferkit.lightning_cli import run_lightning

                run_lightning(argv, from_sys_argv=argv == sys.argv[1:])
                return 0
            if command in COMMANDS:
                return run_command(command, argv[1:])
        raise UserError(f"unknown command '{command}'{_close(command, [*LIGHTNING_COMMANDS, *COMMANDS])}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201
        return 2
    except SystemExit as e:  # --help, --print_config; Lightning's SIGTERMException is one too
        if type(e).__name__ == "SIGTERMException":
            message = "error: stopped by SIGTERM (the checkpoint it left resumes with --ckpt_path last)"
            print(message, file=sys.stderr)  # noqa: T201
            return 143  # 128 + SIGTERM, what a shell reports for a job ended by the signal
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


# ---------------------------------------------------------------------------------------------- commands
def run_command(command: str, argv: list[str]) -> int:
    """Parse ``argv`` for ``command`` (one of :data:`COMMANDS`) and call its function."""
    target, help_ = COMMANDS[command]
    prog = f"transferkit {command}"
    if isinstance(target, dict):
        subs = [s for s in target if s]
        if argv and argv[0] in subs:
            target, prog, argv = target[argv[0]], f"{prog} {argv[0]}", argv[1:]
        elif "" in target:
            target = target[""]
        elif not argv or argv[0] in ("-h", "--help"):
            print(f"usage: {prog} {{{','.join(subs)}}} [options]\n\n{help_}")  # noqa: T201
            return 0 if argv else 2
        else:
            raise UserError(
                f"unknown subcommand '{prog} {argv[0]}'{_close(argv[0], subs)}; choose one of {subs}"
            )
        epilog = (
            f"subcommands: {', '.join(subs)} ('{prog} SUBCOMMAND --help')" if prog.count(" ") == 1 else None
        )
    else:
        epilog = None
    fn = resolve_target(target)
    return call_command(fn, argv, prog, epilog=epilog)


def resolve_target(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _special_params(fn: Callable[..., Any]) -> tuple[list[str], dict[str, type]]:
    """Parameters the parser builds itself: ``DataSpec`` ones (``--<name>.*``) and dataclasses marked
    ``cli_flatten`` (their fields become top-level options, e.g. ``--batch_size``)."""
    import dataclasses
    import typing

    from transferkit.data.spec import DataSpec

    hints = {k: v for k, v in typing.get_type_hints(fn).items() if k != "return"}
    data = [n for n, t in hints.items() if t is DataSpec]
    flat = {
        n: t for n, t in hints.items() if dataclasses.is_dataclass(t) and getattr(t, "cli_flatten", False)
    }
    return data, flat


def build_command_parser(fn: Callable[..., Any], prog: str, epilog: str | None = None) -> Any:
    """The jsonargparse parser of a command function: ``--config``, ``--print_config``, one option per
    parameter (dataclass parameters as dotted groups; required positional parameters as positionals)."""
    from jsonargparse import ActionConfigFile

    doc = inspect.getdoc(fn) or ""
    parser = CommandParser(prog=prog, description=doc.split("\n\n")[0], epilog=epilog, allow_abbrev=False)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML config of this command (--print_config writes one)"
    )
    data, flat = _special_params(fn)
    if data:
        from transferkit.data.options import DataOptions  # the datamodule's options, without torch

        params = inspect.signature(fn).parameters
        for key in data:
            parser.add_class_arguments(DataOptions, key, fail_untyped=False)
            default = params[key].default  # a command's own default dataset (compare: shapes)
            if default is not inspect.Parameter.empty and default is not None:
                parser.set_defaults({f"{key}.{k}": v for k, v in default.init_args.items()})
            parser.add_argument(
                f"--{key}.classes",
                type=list[int | str] | None,
                default=None,
                help="keep only these class names (a class-subset task); default: every class",
            )
    parser.add_function_arguments(fn, as_positional=True, skip={*data, *flat})
    for cls in flat.values():
        parser.add_method_arguments(cls, "__init__", None, as_group=False, fail_untyped=False)
    return parser


def call_command(fn: Callable[..., Any], argv: list[str], prog: str, epilog: str | None = None) -> int:
    """Parse ``argv`` with the function's parser, build its dataclass parameters, call it."""
    import dataclasses

    from transferkit.data.spec import DataSpec, expand_data_shorthand
    from transferkit.runs import command_config

    data, flat = _special_params(fn)
    if data:
        argv = expand_data_shorthand(argv)
    parser = build_command_parser(fn, prog, epilog)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="jsonargparse")
        cfg = parser.parse_args(argv)
        text = parser.dump(cfg, skip_none=False)
        built: dict[str, Any] = {}
        try:
            for key in data:
                args = cfg.pop(key).as_dict()
                classes = args.pop("classes", None)
                built[key] = DataSpec(args, None if classes is None else [str(c) for c in classes])
            for key, cls in flat.items():
                built[key] = cls(**{f.name: cfg.pop(f.name) for f in dataclasses.fields(cls) if f.init})
            init = parser.instantiate(cfg)
        except Exception as e:  # a dataclass's own validation arrives wrapped by jsonargparse
            raise user_error_in(e) from None
    params = inspect.signature(fn).parameters
    kwargs = {k: init[k] for k in init.keys() if "." not in k and k in params}
    kwargs.update(built)
    with command_config(text):
        result = fn(**kwargs)
    return int(result or 0)


# ---------------------------------------------------------------------------------------------- errors
def _close(word: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


@functools.cache
def _parser_class() -> type:
    from jsonargparse import ArgumentParser

    class CommandParser(OneLineErrors, ArgumentParser):
        """jsonargparse's parser with one-line usage errors (:class:`~transferkit.errors.OneLineErrors`)."""

    return CommandParser


def CommandParser(**kwargs: Any) -> Any:  # noqa: N802  (the class is built on first use: --help stays light)
    return _parser_class()(**kwargs)


if __name__ == "__main__":
    sys.exit(main())
