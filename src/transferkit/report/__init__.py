"""Run reports: tables (Markdown / rich), plots (matplotlib PNG) and a Markdown + HTML report writer.

``Report`` collects headings, text, tables and images and writes ``report.md`` and a self-contained
``report.html``; ``Table`` renders one table to Markdown and to the terminal; ``plots`` draws the figures.
"""

from transferkit.report.plots import heatmap, scatter
from transferkit.report.report import Report
from transferkit.report.tables import Table, format_value, params_m, parse_markdown_table, percent

__all__ = [
    "Report",
    "Table",
    "format_value",
    "heatmap",
    "params_m",
    "parse_markdown_table",
    "percent",
    "scatter",
]
