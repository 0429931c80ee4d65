"""Run reports: keyed, replaceable sections written as ``report.md`` and a self-contained ``report.html``.

Every command that reports builds a :class:`Report` of sections; :meth:`Report.write` merges them into the
run's ``report.md`` (a section replaces the one with the same key and leaves the others alone, so
``transferkit evaluate`` and each ``transferkit analyze <what>`` refresh their own part of a run's report)
and renders ``report.html`` from the whole Markdown (markdown-it, CommonMark + tables, images embedded)::

    report = Report("Backbone comparison on digits")
    sec = report.section("results", "Results")
    sec.add_table(Table(["backbone", "top-1"], rows))
    sec.add_image("plots/acc_vs_params.png", "Accuracy vs parameters")
    report.write(run_dir)   # run_dir/report.md, run_dir/report.html

Sections sit between ``<!-- transferkit:<key> -->`` and ``<!-- /transferkit:<key> -->`` markers. An image is
given absolute, relative to the run directory (``plots/x.png``) or relative to the working directory, as a path
built from a relative run directory is (``runs/compare/plots/x.png``); ``report.md`` links it relative to its
own folder (an image outside the run directory is copied to ``<run_dir>/plots/``) and ``report.html`` embeds
it as a data URI.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.report.tables import Table
from transferkit.utils.io import atomic_write_text

CSS = """
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.65em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
code { background: #f3f3f3; padding: 0 0.25em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.85em; }
"""

_MARK = re.compile(
    r"<!-- transferkit:(?P<key>[\w.-]+) -->\n(?P<body>.*?)\n<!-- /transferkit:(?P=key) -->", re.S
)
_IMG = re.compile(r'<img src="(?P<src>[^"]+)"')
_MIME = {".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass
class Block:
    kind: str  # text | table | image
    content: Any
    caption: str = ""
    key: str | None = None


@dataclass
class Section:
    """One keyed section: an optional heading and blocks of Markdown text, tables and images."""

    key: str
    heading: str | None = None
    level: int = 2
    blocks: list[Block] = field(default_factory=list)

    def add_text(self, markdown: str) -> Section:
        """A paragraph (or several) of Markdown."""
        self.blocks.append(Block("text", markdown.strip()))
        return self

    def add_table(self, table: Table, key: str | None = None) -> Section:
        self.blocks.append(Block("table", table, key=key))
        return self

    def add_image(self, path: str | Path, caption: str = "") -> Section:
        """A PNG/JPEG/SVG figure: absolute, relative to the run directory or relative to the working directory
        (see :func:`_image_path`)."""
        self.blocks.append(Block("image", Path(path), caption=caption))
        return self

    def to_markdown(self, run_dir: Path) -> str:
        parts = [f"{'#' * max(2, self.level)} {self.heading}"] if self.heading else []
        for b in self.blocks:
            if b.kind == "text":
                parts.append(b.content)
            elif b.kind == "table":
                parts.append(b.content.to_markdown())
            else:
                link = urllib.parse.quote(_image_path(b.content, run_dir).as_posix())
                alt = re.sub(r"([\\\[\]])", r"\\\1", b.caption)
                parts.append(f"![{alt}]({link})" + (f"\n\n_{b.caption}_" if b.caption else ""))
        return "\n\n".join(parts)


@dataclass
class Report:
    """A report under construction: a title, a line of metadata and keyed sections."""

    title: str
    meta: str | None = None
    sections: list[Section] = field(default_factory=list)

    def section(self, key: str, heading: str | None = None, level: int = 2) -> Section:
        """The section ``key`` (created at the end, with ``heading``, when new)."""
        for s in self.sections:
            if s.key == key:
                return s
        if not re.fullmatch(r"[\w.-]+", key):
            raise ValueError(f"section key {key!r}: use letters, digits, '_', '-', '.'")
        s = Section(key, heading, level)
        self.sections.append(s)
        return s

    def table(self, key: str) -> Table:
        """The table added with ``key`` in any section."""
        for s in self.sections:
            for b in s.blocks:
                if b.kind == "table" and b.key == key:
                    return b.content
        raise KeyError(key)

    # ------------------------------------------------------------------ rendering
    def header(self) -> str:
        return f"# {self.title}" + (f"\n\n_{self.meta}_" if self.meta else "")

    def to_markdown(self, run_dir: str | Path = ".") -> str:
        """This report alone, with section markers."""
        run_dir = Path(run_dir)
        parts = [self.header()] + [_wrap(s.key, s.to_markdown(run_dir)) for s in self.sections]
        return "\n\n".join(parts) + "\n"

    def write(self, run_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
        """Merge the sections into ``<run_dir>/<name>.md`` (same key: replaced in place; new: appended; others
        kept; a new file gets this report's title) and render ``<name>.html``. Returns both paths."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        md_path = run_dir / f"{name}.md"
        new = {s.key: _wrap(s.key, s.to_markdown(run_dir)) for s in self.sections}
        if md_path.is_file():
            text = md_path.read_text()
            seen = set()

            def replace(m: re.Match) -> str:
                seen.add(m.group("key"))
                return new.get(m.group("key"), m.group(0))

            text = _MARK.sub(replace, text).rstrip("\n")
            rest = [block for key, block in new.items() if key not in seen]
            text = "\n\n".join([text, *rest]) + "\n"
        else:
            text = "\n\n".join([self.header(), *new.values()]) + "\n"
        atomic_write_text(md_path, text)
        title = self.title
        first = text.splitlines()[0] if text else ""
        if first.startswith("# "):
            title = first[2:]
        html_path = atomic_write_text(run_dir / f"{name}.html", markdown_to_html(text, title, run_dir))
        return md_path, html_path


def _wrap(key: str, body: str) -> str:
    return f"<!-- transferkit:{key} -->\n{body.strip()}\n<!-- /transferkit:{key} -->"


def _image_path(path: Path, run_dir: Path) -> Path:
    """The image ``path`` relative to ``run_dir`` (the link ``report.md`` in ``run_dir`` needs), copying the
    file into ``run_dir/plots`` when it lies outside.

    A relative ``path`` is taken relative to ``run_dir`` when the file is there, else relative to the working
    directory: a plot written to ``run.path / "plots"`` of a relative run directory (``runs/compare``) is
    ``runs/compare/plots/x.png``, which names the file from the working directory, not from the run directory.
    """
    candidates = [path] if path.is_absolute() else [run_dir / path, Path.cwd() / path]
    full = next((c for c in candidates if c.is_file()), None)
    if full is None:
        where = " or ".join(f"'{c}'" for c in candidates)
        raise FileNotFoundError(f"report image '{path}' not found (looked for {where})")
    try:
        return full.resolve().relative_to(run_dir.resolve())
    except ValueError:
        target = run_dir / "plots" / full.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full, target)
        return target.relative_to(run_dir)


def markdown_to_html(markdown: str, title: str, run_dir: str | Path | None = None) -> str:
    """A standalone HTML page of ``markdown``; images inside ``run_dir`` (links relative to it, as in its
    ``report.md``) are embedded as data URIs."""
    from markdown_it import MarkdownIt

    # raw HTML stays text (class names and paths come from users' folders); the section markers go
    markdown = re.sub(r"^<!-- /?transferkit:[\w.-]+ -->\n", "", markdown, flags=re.M)
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    if run_dir is not None:
        root = Path(run_dir).resolve()

        def embed(m: re.Match) -> str:
            src = urllib.parse.unquote(html.unescape(m.group("src")))
            path = (root / src).resolve()
            if "://" in src or src.startswith("data:") or not path.is_file() or root not in path.parents:
                return m.group(0)
            data = base64.b64encode(path.read_bytes()).decode()
            return f'<img src="data:{_MIME.get(path.suffix.lower(), "image/png")};base64,{data}"'

        body = _IMG.sub(embed, body)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + body
        + f'\n<p class="meta">written by transferkit, {time.strftime("%Y-%m-%d %H:%M:%S")}</p>'
        + "\n</body></html>\n"
    )
