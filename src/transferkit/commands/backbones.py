"""``transferkit backbones``: list the registered backbones and the other accepted name forms."""

from __future__ import annotations


def backbones(*, offline: bool = False) -> int:
    """List the registered backbones (append ':random' for the random-init twin).

    Args:
        offline: only those that build without a download.
    """
    from rich.table import Table

    from transferkit.backbones import registered_backbones
    from transferkit.utils.console import make_console

    table = Table(title="registered backbones (append ':random' for the random-init twin)")
    for col in ("name", "family", "offline", "description"):
        table.add_column(col)
    for name, entry in sorted(registered_backbones().items()):
        if offline and not entry.offline:
            continue
        table.add_row(name, entry.family, "yes" if entry.offline else "no", entry.description)
    console = make_console()
    console.print(table)
    console.print(
        "Also accepted: any timm model name (or timm:<name>), a Hugging Face hub id (org/name, or hf:<id>), "
        "or a local directory written by save_pretrained."
    )
    return 0
