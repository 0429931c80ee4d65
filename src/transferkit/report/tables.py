"""Result tables rendered three ways from one definition: Markdown (reports), rich (terminal), and plain
values (``results.json``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Formatter = str | Callable[[Any], str]


def format_value(value: Any, fmt: Formatter | None = None) -> str:
    """One cell as text: ``fmt`` is a format spec (``'.2f'``, ``',.0f'``, ``'.2%'``) or a callable; None and
    NaN print as ``-``; floats default to 4 significant decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if callable(fmt):
        return fmt(value)
    if fmt is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def percent(value: float) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals (``0.8639 -> '86.39'``), the DINOv2/timm style."""
    return f"{100.0 * value:.2f}"


def params_m(value: int) -> str:
    """A parameter count in millions (``22_713_216 -> '22.71M'``)."""
    return f"{value / 1e6:.2f}M"


def _escape_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    """A titled table. ``rows`` are sequences (in ``columns`` order) or mappings keyed by column name;
    ``formats`` maps a column to a format spec or callable (see :func:`format_value`); ``note`` is a line of
    Markdown printed under it."""

    columns: list[str]
    rows: list[Sequence[Any] | dict[str, Any]]
    title: str | None = None
    formats: dict[str, Formatter] = field(default_factory=dict)
    note: str | None = None

    def cells(self) -> list[list[str]]:
        """Rows as formatted strings, in column order."""
        out = []
        for row in self.rows:
            values = [row.get(c) for c in self.columns] if isinstance(row, dict) else list(row)
            if len(values) != len(self.columns):
                raise ValueError(f"row has {len(values)} values for {len(self.columns)} columns: {values}")
            out.append([format_value(v, self.formats.get(c)) for c, v in zip(self.columns, values)])
        return out

    def to_markdown(self) -> str:
        lines = []
        if self.title:
            lines += [f"**{_escape_md(self.title)}**", ""]
        lines.append("| " + " | ".join(_escape_md(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(_escape_md(v) for v in row) + " |" for row in self.cells()]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def to_rich(self) -> Any:
        """A ``rich.table.Table`` for the terminal; text is literal (``digits[0,3]`` is not rich markup)."""
        from rich.table import Table as RichTable
        from rich.text import Text

        table = RichTable(
            title=Text(self.title) if self.title else None, caption=Text(self.note) if self.note else None
        )
        for c in self.columns:
            table.add_column(Text(c))
        for row in self.cells():
            table.add_row(*(Text(v) for v in row))
        return table

    def records(self) -> list[dict[str, Any]]:
        """The raw (unformatted) rows as dicts."""
        return [dict(r) if isinstance(r, dict) else dict(zip(self.columns, r)) for r in self.rows]


def parse_markdown_table(text: str, title: str | None = None) -> list[dict[str, str]]:
    """Read back a table written by :meth:`Table.to_markdown` (the first one, or the one under ``title``)."""
    lines = text.splitlines()
    start = 0
    if title is not None:
        marker = f"**{_escape_md(title)}**"
        start = next(i for i, line in enumerate(lines) if line.strip() == marker)
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append([c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A titleless :class:`Table` as Markdown (floats with 4 decimals, None as ``-``)."""
    return Table(list(columns), [list(r) for r in rows]).to_markdown()
