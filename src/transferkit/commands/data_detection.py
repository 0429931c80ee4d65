"""``transferkit data make-shapes`` and ``transferkit data convert``: detection-data sub-commands.

``make-shapes OUT [--n 2000]`` writes the synthetic shapes detection set (images, ``train/val/test.jsonl``,
``shapes.json``). ``convert INPUT OUTPUT`` turns grounding JSONL (``.jsonl``) into COCO json (``.json``) or
back; malformed records are reported with their line numbers (JSONL) or index paths (COCO) and every other
record is converted; the exit status is 1 when any record was skipped, 2 on a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from rich.markup import escape
from rich.table import Table

from transferkit.errors import UserError
from transferkit.utils.console import make_console


def add_subcommands(subcommands: Any) -> None:
    """Register ``make-shapes`` and ``convert`` on the ``transferkit data`` sub-command action."""
    shapes = ArgumentParser(description="Write the synthetic shapes detection set (grounding JSONL + PNGs).")
    shapes.add_argument(
        "out", type=str, help="Output folder (created; must be empty or an earlier shapes set)."
    )
    shapes.add_argument("--n", type=int, default=2000, help="Number of images.")
    shapes.add_argument("--min_size", type=int, default=64, help="Smallest image side in pixels.")
    shapes.add_argument("--max_size", type=int, default=96, help="Largest image side in pixels.")
    shapes.add_argument("--max_objects", type=int, default=4, help="Most shapes per image.")
    shapes.add_argument("--val_fraction", type=float, default=0.1, help="Share of images in val.")
    shapes.add_argument("--test_fraction", type=float, default=0.1, help="Share of images in test.")
    shapes.add_argument(
        "--seed", type=int, default=0, help="Random seed (the set is a function of the options)."
    )
    subcommands.add_subcommand("make-shapes", shapes, help="Write the synthetic shapes detection dataset.")

    convert = ArgumentParser(
        description="Convert grounding JSONL (.jsonl) <-> COCO detection json (.json); the direction follows "
        "the file extensions. Malformed records are reported with their line numbers and skipped."
    )
    convert.add_argument("input", type=str, help="A .jsonl (grounding) or .json (COCO) file.")
    convert.add_argument("output", type=str, help="The .json or .jsonl file to write.")
    convert.add_argument(
        "--image_root",
        type=str | None,
        default=None,
        help="Folder image paths are relative to, for reading sizes missing from JSONL (default: INPUT's folder).",
    )
    convert.add_argument("--strict", type=bool, default=False, help="Stop at the first malformed record.")
    convert.add_argument("--max_issues", type=int, default=30, help="Malformed records printed.")
    subcommands.add_subcommand("convert", convert, help="Convert grounding JSONL <-> COCO json.")


def run(cfg: Any) -> int | None:
    """Run the sub-command of ``cfg`` if it is one of these; None otherwise."""
    if cfg.command == "make-shapes":
        return make_shapes_command(cfg["make-shapes"])
    if cfg.command == "convert":
        return convert_command(cfg.convert)
    return None


def make_shapes_command(args: Any) -> int:
    from transferkit.data.detection.shapes import ShapesConfig, make_shapes

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "shapes.json").is_file():
        raise UserError(f"'{out}' is not empty and holds no shapes set; choose an empty or new folder")
    cfg = ShapesConfig(
        n=args.n,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    summary = make_shapes(out, cfg)
    console = make_console()
    table = Table(title=f"shapes dataset in {escape(str(out))}")
    for col in ("split", "file", "images", "objects"):
        table.add_column(col, justify="right" if col in ("images", "objects") else "left")
    for split, c in summary["splits"].items():
        table.add_row(split, f"{split}.jsonl", str(c["images"]), str(c["objects"]))
    console.print(table)
    console.print(
        f"{len(summary['classes'])} classes, {summary['descriptions']} descriptions; "
        f"train with: transferkit fit --config configs/detection/detr_shapes.yaml --data.path {out}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def convert_command(args: Any) -> int:
    from PIL import Image

    from transferkit.data.detection.coco import read_coco, records_to_coco, write_coco
    from transferkit.data.grounding import read_grounding_jsonl, write_grounding_jsonl

    src, dst = Path(args.input), Path(args.output)
    kinds = {".jsonl": "grounding", ".json": "coco"}
    if src.suffix not in kinds or dst.suffix not in kinds or kinds[src.suffix] == kinds[dst.suffix]:
        raise UserError(
            f"convert needs one .jsonl (grounding) and one .json (COCO) file, got '{src.name}' -> '{dst.name}'"
        )
    if src.resolve() == dst.resolve():
        raise UserError("input and output are the same file")
    console = make_console()
    notes: list[str] = []
    if src.suffix == ".jsonl":
        records, errors = read_grounding_jsonl(src, strict=args.strict)
        root = Path(args.image_root) if args.image_root else src.parent

        def size_of(rec: Any) -> tuple[int, int]:
            p = Path(rec.image)
            with Image.open(p if p.is_absolute() else root / p) as im:
                return im.height, im.width

        coco, more = records_to_coco(records, size_of=size_of, strict=args.strict, source=str(src))
        errors += more
        write_coco(dst, coco)
        n_images, n_objects = len(coco["images"]), len(coco["annotations"])
    else:
        records, errors, notes = read_coco(src, strict=args.strict)
        write_grounding_jsonl(dst, records)
        n_images, n_objects = len(records), sum(len(r.objects) for r in records)
    for note in notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    for err in errors[: args.max_issues]:
        console.print(f"[red]skipped[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
    if len(errors) > args.max_issues:
        console.print(f"... and {len(errors) - args.max_issues} more skipped records")
    verdict = "[green]OK[/green]" if not errors else f"[red]{len(errors)} record(s) skipped[/red]"
    console.print(
        f"{verdict}: wrote {n_images} images, {n_objects} objects to {escape(str(dst))}",
        highlight=False,
        soft_wrap=True,
    )
    return 1 if errors else 0
