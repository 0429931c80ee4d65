"""``transferkit backbones``: list the registered backbones and the other accepted name forms."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from transferkit.utils.console import make_console


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="transferkit backbones", description="List the registered backbones.")
    parser.add_argument(
        "--offline", type=bool, default=False, help="only those that build without a download"
    )
    args = parser.parse_args(argv)

    from rich.table import Table

    from transferkit.backbones import registered_backbones

    table = Table(title="registered backbones (append ':random' for the random-init twin)")
    for col in ("name", "family", "offline", "description"):
        table.add_column(col)
    for name, entry in sorted(registered_backbones().items()):
        if args.offline and not entry.offline:
            continue
        table.add_row(name, entry.family, "yes" if entry.offline else "no", entry.description)
    console = make_console()
    console.print(table)
    console.print(
        "Also accepted: any timm model name (or timm:<name>), a Hugging Face hub id (org/name, or hf:<id>), "
        "or a local directory written by save_pretrained."
    )
    return 0
