"""Run reports: one list of blocks (headings, Markdown text, tables, images) written as ``report.md`` and a
self-contained ``report.html`` (images embedded, Markdown rendered with markdown-it-py).

Any command can build one; later features add sections to an existing run's report by building a new
:class:`Report`, or by appending to the one a runner returns before ``write``::

    report = Report("Backbone comparison on digits")
    report.add_section("Results")
    report.add_table(Table(["backbone", "top-1"], rows), key="results")
    report.add_image("plots/acc_vs_params.png", "Accuracy vs parameters")
    report.add_text("Pretraining helps: ...")
    report.write(run_dir)   # run_dir/report.md, run_dir/report.html

Image paths are relative to the run directory (images outside it are copied to ``<run_dir>/plots/``).
"""

from __future__ import annotations

import base64
import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.report.tables import Table
from transferkit.utils.io import atomic_write_text

_CSS = """
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.65em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.25em; }
.meta { color: #666; font-size: 0.85em; }
"""


@dataclass
class Block:
    kind: str  # heading | text | table | image
    content: Any
    level: int = 2
    caption: str = ""
    key: str | None = None


@dataclass
class Report:
    """A report under construction. ``write(run_dir)`` produces ``report.md`` and ``report.html``."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    meta: str | None = None

    # ------------------------------------------------------------------ building
    def add_section(self, heading: str, level: int = 2) -> Report:
        self.blocks.append(Block("heading", heading, level=level))
        return self

    def add_text(self, markdown: str) -> Report:
        """A paragraph (or several) of Markdown."""
        self.blocks.append(Block("text", markdown.strip()))
        return self

    def add_table(
        self,
        table: Table | None = None,
        *,
        columns: list[str] | None = None,
        rows: list[Any] | None = None,
        title: str | None = None,
        formats: dict[str, Any] | None = None,
        note: str | None = None,
        key: str | None = None,
    ) -> Report:
        """A :class:`~transferkit.report.tables.Table`, or one built from ``columns``/``rows``/``formats``."""
        if table is None:
            if columns is None or rows is None:
                raise ValueError("add_table needs a Table or columns and rows")
            table = Table(list(columns), list(rows), title=title, formats=formats or {}, note=note)
        self.blocks.append(Block("table", table, key=key))
        return self

    def add_image(self, path: str | Path, caption: str = "") -> Report:
        """A PNG/JPEG/SVG figure (path absolute or relative to the run directory)."""
        self.blocks.append(Block("image", Path(path), caption=caption))
        return self

    def table(self, key: str) -> Table:
        """The table added with ``key``."""
        for b in self.blocks:
            if b.kind == "table" and b.key == key:
                return b.content
        raise KeyError(key)

    # ------------------------------------------------------------------ rendering
    def _image_path(self, path: Path, run_dir: Path) -> Path:
        """``path`` relative to ``run_dir``, copying the file into ``run_dir/plots`` when it lies outside."""
        full = path if path.is_absolute() else run_dir / path
        try:
            return full.resolve().relative_to(run_dir.resolve())
        except ValueError:
            target = run_dir / "plots" / full.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(full, target)
            return target.relative_to(run_dir)

    def to_markdown(self, run_dir: str | Path = ".") -> str:
        run_dir = Path(run_dir)
        parts = [f"# {self.title}"]
        if self.meta:
            parts.append(f"_{self.meta}_")
        for b in self.blocks:
            if b.kind == "heading":
                parts.append(f"{'#' * max(2, b.level)} {b.content}")
            elif b.kind == "text":
                parts.append(b.content)
            elif b.kind == "table":
                parts.append(b.content.to_markdown())
            elif b.kind == "image":
                rel = self._image_path(b.content, run_dir).as_posix()
                parts.append(f"![{b.caption}]({rel})" + (f"\n\n_{b.caption}_" if b.caption else ""))
        return "\n\n".join(parts) + "\n"

    def to_html(self, run_dir: str | Path = ".", embed_images: bool = True) -> str:
        """A standalone HTML page; images are embedded as base64 unless ``embed_images`` is False."""
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False}).enable("table")
        run_dir = Path(run_dir)
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.meta:
            body.append(f'<p class="meta">{html.escape(self.meta)}</p>')
        for b in self.blocks:
            if b.kind == "heading":
                level = min(max(2, b.level), 6)
                body.append(f"<h{level}>{html.escape(b.content)}</h{level}>")
            elif b.kind == "text":
                body.append(md.render(b.content))
            elif b.kind == "table":
                body.append(md.render(b.content.to_markdown()))
            elif b.kind == "image":
                rel = self._image_path(b.content, run_dir)
                if embed_images:
                    data = base64.b64encode((run_dir / rel).read_bytes()).decode()
                    mime = {"svg": "image/svg+xml", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(
                        rel.suffix.lower().lstrip("."), "image/png"
                    )
                    src = f"data:{mime};base64,{data}"
                else:
                    src = html.escape(rel.as_posix())
                cap = html.escape(b.caption)
                body.append(f'<figure><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body)
            + f'\n<p class="meta">written by transferkit, {time.strftime("%Y-%m-%d %H:%M:%S")}</p>'
            + "\n</body></html>\n"
        )

    def write(self, run_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
        """Write ``<run_dir>/<name>.md`` and ``<run_dir>/<name>.html`` atomically; returns both paths."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        md_path = atomic_write_text(run_dir / f"{name}.md", self.to_markdown(run_dir))
        html_path = atomic_write_text(run_dir / f"{name}.html", self.to_html(run_dir))
        return md_path, html_path
