"""The one report stack: tables (Markdown / rich), figures (matplotlib PNG) and keyed report sections written as
``report.md`` and a self-contained ``report.html``.

``Report`` holds keyed sections and merges them into a run's report; ``Table`` renders one table to Markdown
and to the terminal; ``plots`` has the figure helper and the comparison plots.
"""

from transferkit.report.plots import class_colors, heatmap, new_figure, save_figure, scatter
from transferkit.report.report import Report, Section, markdown_to_html
from transferkit.report.tables import (
    Table,
    format_value,
    markdown_table,
    params_m,
    parse_markdown_table,
    percent,
)

__all__ = [
    "Report",
    "Section",
    "Table",
    "class_colors",
    "format_value",
    "heatmap",
    "markdown_table",
    "markdown_to_html",
    "new_figure",
    "params_m",
    "parse_markdown_table",
    "percent",
    "save_figure",
    "scatter",
]
