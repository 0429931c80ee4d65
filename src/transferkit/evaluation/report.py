"""The run's report: ``runs/<name>/report.md`` (+ ``report.html``), one replaceable section per producer.

Each section sits between ``<!-- transferkit:<key> -->`` and ``<!-- /transferkit:<key> -->`` markers, so
re-running ``transferkit evaluate`` or one ``transferkit analyze <what>`` replaces its own section and leaves
the others alone. Links are relative to the run directory (``evaluation/confusion_matrix.png``). The HTML is
rendered from the Markdown with markdown-it (CommonMark + tables), images linked relative to the run.
Tables come from :mod:`transferkit.report.tables`; :class:`transferkit.report.Report` writes whole reports,
this module keeps one report made of independently refreshed sections.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit.utils.io import atomic_write_text

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
code { background: #f5f5f5; padding: 0 3px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
"""


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table through the project's :class:`transferkit.report.Table` (floats with 4 decimals,
    None as ``-``)."""
    from transferkit.report.tables import Table

    return Table(list(headers), [list(r) for r in rows]).to_markdown()


def markdown_to_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}</body></html>\n"
    )


def update_run_report(run_dir: str | Path, key: str, body: str) -> Path:
    """Insert or replace section ``key`` (Markdown ``body``, starting with its ``## `` heading) in
    ``<run_dir>/report.md`` and re-render ``report.html``. Returns the Markdown path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.md"
    text = path.read_text() if path.is_file() else f"# Run `{run_dir.name}`\n"
    start, end = f"<!-- transferkit:{key} -->", f"<!-- /transferkit:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    atomic_write_text(run_dir / "report.html", markdown_to_html(text, f"transferkit run {run_dir.name}"))
    return path
