"""``transferkit data ...``: dataset utilities.

``transferkit data check PATH [--source auto|imagefolder|csv] [--json FILE]`` checks an image-classification
dataset (layout, classes, per-split counts and balance, unreadable / empty / duplicate / non-RGB images),
prints a table and the issues, and exits 1 if any issue is an error, 0 otherwise.
``make-shapes`` and ``convert`` (detection data) live in :mod:`transferkit.commands.data_detection`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jsonargparse import ActionYesNo, ArgumentParser
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transferkit.commands import data_detection
from transferkit.data.validate import DatasetReport, check_dataset
from transferkit.utils.console import make_console

MAX_CLASS_ROWS = 40


def build_parser() -> ArgumentParser:
    """The ``transferkit data`` parser, one sub-parser per sub-command."""
    parser = ArgumentParser(prog="transferkit data", description="Dataset utilities.")
    subcommands = parser.add_subcommands(required=True, dest="command")

    check = ArgumentParser(
        description=(
            "Check an image-classification dataset: an imagefolder tree "
            "(PATH/train|val|test/<class>/<image>) or a CSV with header path,label[,split]. "
            "Exits 1 if any problem is an error."
        )
    )
    check.add_argument("path", type=str, help="Dataset folder or CSV file.")
    check.add_argument(
        "--source",
        type=Literal["auto", "imagefolder", "csv"],
        default="auto",
        help="Dataset format; auto: a folder is an imagefolder, a .csv file a CSV.",
    )
    check.add_argument(
        "--json", type=str | None, default=None, help="Also write the full report to this JSON file."
    )
    check.add_argument(
        "--deep",
        action=ActionYesNo,
        default=True,
        help="Read and decode every image (hashes for duplicates); --no_deep checks layout and sizes only.",
    )
    check.add_argument("--workers", type=int | None, default=None, help="Threads reading images.")
    check.add_argument(
        "--max_issues", type=int, default=30, help="Issues printed (all of them go to --json)."
    )
    subcommands.add_subcommand("check", check, help="Check a dataset for layout, label and image problems.")
    data_detection.add_subcommands(subcommands)  # make-shapes, convert
    return parser


def main(argv: list[str]) -> int:
    """Run ``transferkit data`` with ``argv`` (the words after ``data``); returns the exit status."""
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error jsonargparse already printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if cfg.command == "check":
        return _check(cfg.check)
    status = data_detection.run(cfg)
    if status is not None:
        return status
    raise AssertionError(f"unhandled subcommand {cfg.command}")


def _check(args) -> int:
    console = make_console()
    report = check_dataset(args.path, args.source, deep=args.deep, progress=True, workers=args.workers)
    print_report(report, console, max_issues=args.max_issues)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"report written to {out}")
    return 0 if report.ok else 1


def _fmt_ratio(r: float) -> str:
    if r != r:  # nan: no images
        return "-"
    return "inf" if r == float("inf") else f"{r:.2f}"


def print_report(report: DatasetReport, console: Console, max_issues: int = 30) -> None:
    """Render a :class:`DatasetReport`: class x split counts, imbalance, then the issues."""
    console.print(
        f"[bold]{escape(report.path)}[/bold]  ({report.layout}; {report.files_checked} files checked"
        f"{'' if report.deep else ', layout only'})",
        highlight=False,
        soft_wrap=True,
    )
    splits = report.splits
    if report.class_names and splits:
        table = Table(title=f"{len(report.class_names)} classes")
        table.add_column("class")
        for s in splits:
            table.add_column(s, justify="right")
        table.add_column("total", justify="right")
        names = report.class_names
        for c in names[:MAX_CLASS_ROWS]:
            n = [report.counts[s].get(c, 0) for s in splits]
            table.add_row(escape(c), *[str(v) if v else "[red]0[/red]" for v in n], str(sum(n)))
        if len(names) > MAX_CLASS_ROWS:
            table.add_row(f"... {len(names) - MAX_CLASS_ROWS} more", *[""] * (len(splits) + 1))
        table.add_section()
        totals = [sum(report.counts[s].values()) for s in splits]
        table.add_row("[bold]total[/bold]", *[str(t) for t in totals], str(sum(totals)))
        table.add_row("min per class", *[str(min(report.counts[s].values())) for s in splits], "")
        table.add_row("max per class", *[str(max(report.counts[s].values())) for s in splits], "")
        table.add_row("imbalance (max/min)", *[_fmt_ratio(report.imbalance(s)) for s in splits], "")
        console.print(table)

    issues = sorted(report.issues, key=lambda i: i.severity != "error")
    for issue in issues[:max_issues]:
        style = "red" if issue.severity == "error" else "yellow"
        where = f"{escape(issue.path)}: " if issue.path and issue.path not in issue.message else ""
        console.print(
            f"[{style}]{issue.severity}[/{style}] {escape(f'[{issue.kind}]')} {where}{escape(issue.message)}",
            highlight=False,
            soft_wrap=True,  # one line per issue, whatever the terminal width (grep-able logs)
        )
    if len(issues) > max_issues:
        console.print(f"... and {len(issues) - max_issues} more issues (--json FILE writes them all)")
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(f"{verdict}: {n_err} error(s), {n_warn} warning(s)")
