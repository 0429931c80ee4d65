"""``transferkit data check|make-shapes|convert``: dataset tools.

transferkit data check path/to/dataset
transferkit data make-shapes data/shapes --n 2000
transferkit data convert data/shapes/train.jsonl data/shapes/train.json
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape

MAX_CLASS_ROWS = 40


def check(
    path: str,
    *,
    source: Literal["auto", "imagefolder", "csv"] = "auto",
    json: str | None = None,
    deep: bool = True,
    workers: int | None = None,
    max_issues: int = 30,
) -> int:
    """Check an image-classification dataset: an imagefolder tree (PATH/train|val|test/<class>/<image>) or a CSV
    with header path,label[,split]: layout, classes, per-split counts and balance, unreadable / empty / duplicate /
    non-RGB images. Exits 1 if any problem is an error.

    Args:
        path: dataset folder or CSV file.
        source: dataset format; auto: a folder is an imagefolder, a .csv file a CSV.
        json: also write the full report to this JSON file.
        deep: read and decode every image (hashes for duplicates); false checks layout and sizes only.
        workers: threads reading images.
        max_issues: issues printed (all of them go to --json).
    """
    from transferkit.data.validate import check_dataset
    from transferkit.utils.console import make_console

    console = make_console()
    report = check_dataset(path, source, deep=deep, progress=True, workers=workers)
    print_report(report, console, max_issues=max_issues)
    if json:
        from transferkit.utils.io import atomic_write_text

        atomic_write_text(json, jsonlib.dumps(report.to_dict(), indent=2))
        console.print(f"report written to {json}")
    return 0 if report.ok else 1


def _fmt_ratio(r: float) -> str:
    if r != r:  # nan: no images
        return "-"
    return "inf" if r == float("inf") else f"{r:.2f}"


def print_report(report, console: Console, max_issues: int = 30) -> None:
    """Render a :class:`~transferkit.data.validate.DatasetReport`: class x split counts, imbalance, the issues."""
    from rich.table import Table

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
    verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(f"{verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")


def make_shapes(
    out: str,
    *,
    n: int = 2000,
    min_size: int = 64,
    max_size: int = 96,
    max_objects: int = 4,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> int:
    """Write the synthetic shapes detection set (grounding JSONL + PNGs): images, train/val/test.jsonl,
    shapes.json.

    Args:
        out: output folder (created; must be empty or an earlier shapes set).
        n: number of images.
        min_size: smallest image side in pixels.
        max_size: largest image side in pixels.
        max_objects: most shapes per image.
        val_fraction: share of images in val.
        test_fraction: share of images in test.
        seed: random seed (the set is a function of the options).
    """
    from rich.table import Table

    from transferkit.data.detection.shapes import ShapesConfig
    from transferkit.data.detection.shapes import make_shapes as write_shapes
    from transferkit.errors import UserError
    from transferkit.utils.console import make_console

    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not (folder / "shapes.json").is_file():
        raise UserError(f"'{folder}' is not empty and holds no shapes set; choose an empty or new folder")
    cfg = ShapesConfig(
        n=n, min_size=min_size, max_size=max_size, max_objects=max_objects, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed,
    )  # fmt: skip
    summary = write_shapes(folder, cfg)
    console = make_console()
    table = Table(title=f"shapes dataset in {escape(str(folder))}")
    for col in ("split", "file", "images", "objects"):
        table.add_column(col, justify="right" if col in ("images", "objects") else "left")
    for split, c in summary["splits"].items():
        table.add_row(split, f"{split}.jsonl", str(c["images"]), str(c["objects"]))
    console.print(table)
    console.print(
        f"{len(summary['classes'])} classes, {summary['descriptions']} descriptions; "
        f"train with: transferkit fit --config configs/detection/detr_shapes.yaml --data.path {folder}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def convert(
    input: str,
    output: str,
    *,
    image_root: str | None = None,
    on_corrupt: Literal["error", "skip"] = "skip",
    max_issues: int = 30,
) -> int:
    """Convert grounding JSONL (.jsonl) <-> COCO detection json (.json); the direction follows the file
    extensions. Malformed records are reported with their line numbers (JSONL) or index paths (COCO) and every
    other record is converted; exits 1 when any record was skipped.

    Args:
        input: a .jsonl (grounding) or .json (COCO) file.
        output: the .json or .jsonl file to write.
        image_root: folder image paths are relative to, for reading sizes missing from JSONL (default: the
            input's folder).
        on_corrupt: a malformed record, or one whose image is missing, not an image or outside the dataset
            folder: skip it (listed; exit 1) or error (stop at the first). Boxes outside their image are
            clamped, zero-area ones dropped, each listed as fixed.
        max_issues: malformed records printed.
    """
    from transferkit.data.detection.coco import read_coco, records_to_coco, write_coco
    from transferkit.data.grounding import check_records, read_grounding_jsonl, write_grounding_jsonl
    from transferkit.errors import UserError
    from transferkit.utils.console import make_console

    src, dst = Path(input), Path(output)
    kinds = {".jsonl": "grounding", ".json": "coco"}
    if src.suffix not in kinds or dst.suffix not in kinds or kinds[src.suffix] == kinds[dst.suffix]:
        raise UserError(
            f"convert needs one .jsonl (grounding) and one .json (COCO) file, got '{src.name}' -> '{dst.name}'"
        )
    if src.resolve() == dst.resolve():
        raise UserError("input and output are the same file")
    console = make_console()
    strict = on_corrupt == "error"
    root = Path(image_root) if image_root else src.parent
    notes: list[str] = []
    if src.suffix == ".jsonl":
        records, errors = read_grounding_jsonl(src, strict=strict)
    else:
        records, errors, notes = read_coco(src, strict=strict)
    # every record against its image (sizes read from the files): paths leaving the folder, missing or
    # non-image files are skipped; boxes outside the image clamped, zero-area ones dropped
    check = check_records(records, root, str(src), open_images=True, strict=strict)
    errors += check.skipped
    if src.suffix == ".jsonl":
        coco, more = records_to_coco(check.records, strict=strict, source=str(src))
        errors += more
        write_coco(dst, coco)
        n_images, n_objects = len(coco["images"]), len(coco["annotations"])
    else:
        write_grounding_jsonl(dst, check.records)
        n_images, n_objects = len(check.records), sum(len(r.objects) for r in check.records)
    for note in notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    for label, items in (("skipped", errors), ("fixed", check.fixed)):
        for err in items[:max_issues]:
            console.print(f"[{'red' if label == 'skipped' else 'yellow'}]{label}[/] {escape(str(err))}",
                          highlight=False, soft_wrap=True)  # fmt: skip
        if len(items) > max_issues:
            console.print(f"... and {len(items) - max_issues} more {label}")
    verdict = "[green]OK[/green]" if not errors else f"[red]{len(errors)} record(s) skipped[/red]"
    fixes = f", {len(check.fixed)} box(es) fixed" if check.fixed else ""
    console.print(
        f"{verdict}{fixes}: wrote {n_images} images, {n_objects} objects to {escape(str(dst))}",
        highlight=False,
        soft_wrap=True,
    )
    return 1 if errors else 0
