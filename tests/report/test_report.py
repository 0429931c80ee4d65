"""Report writer: Markdown + self-contained HTML, tables, images."""

from __future__ import annotations

import base64
import math

import pytest

from transferkit.report import Report, Table, format_value, params_m, parse_markdown_table, percent


def test_table_formats_and_reads_back():
    table = Table(
        ["backbone", "params", "top-1", "note"],
        [["a|b", 22_713_216, 0.86389, None], {"backbone": "c", "params": 5_000, "top-1": 1.0, "note": "x"}],
        title="Results",
        formats={"params": params_m, "top-1": percent},
    )
    md = table.to_markdown()
    assert md.splitlines()[0] == "**Results**"
    rows = parse_markdown_table(md, "Results")
    assert rows == [
        {"backbone": "a|b", "params": "22.71M", "top-1": "86.39", "note": "-"},
        {"backbone": "c", "params": "0.01M", "top-1": "100.00", "note": "x"},
    ]
    assert table.records()[0]["params"] == 22_713_216
    assert (
        format_value(math.nan) == "-"
        and format_value(0.123456) == "0.1235"
        and format_value(3, ".1f") == "3.0"
    )
    with pytest.raises(ValueError, match="2 values for 4 columns"):
        Table(["a", "b", "c", "d"], [[1, 2]]).cells()
    rich_table = table.to_rich()
    assert rich_table.row_count == 2 and str(rich_table.title) == "Results"


def test_report_writes_markdown_and_self_contained_html(tmp_path):
    from transferkit.report import heatmap, scatter

    run = tmp_path / "run"
    inside = scatter([1, 10, 100], [50, 60, 70], ["a", "b", "c"], run / "plots" / "s.png", xlabel="x", ylabel="y",
                     groups=["language", "vision", "vision"], logx=True)  # fmt: skip
    outside = heatmap(
        [[0.5, 1.0], [0.25, math.nan]], ["a", "b"], ["0", "1"], tmp_path / "elsewhere" / "h.png"
    )
    for p in (inside, outside):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = Report("Comparison", meta="digits, 3 backbones")
    sec = report.section("summary", "Summary").add_text("Pretraining **helps**.\n\n- one\n- two")
    sec.add_table(
        Table(["backbone", "top-1"], [["a", 0.5]], title="Main", formats={"top-1": percent}), key="main"
    )
    sec.add_image(inside, "scatter").add_image(outside, "heatmap")
    report.section("raw", "Raw").add_text("<script>alert(1)</script> stays text")
    md_path, html_path = report.write(run)

    md = md_path.read_text()
    assert md.startswith("# Comparison\n") and "## Summary" in md and "Pretraining **helps**." in md
    assert parse_markdown_table(md, "Main") == [{"backbone": "a", "top-1": "50.00"}]
    assert "![scatter](plots/s.png)" in md and "![heatmap](plots/h.png)" in md  # outside image copied in
    assert (run / "plots" / "h.png").is_file()
    assert report.table("main").rows == [["a", 0.5]]

    html = html_path.read_text()
    assert "<table>" in html and "<strong>helps</strong>" in html and "<li>one</li>" in html
    assert html.count('src="data:image/png;base64,') == 2
    b64 = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(b64) == inside.read_bytes()
    assert "<script>" not in html and "&lt;script&gt;" in html  # user text never becomes markup
    assert not list(run.glob(".*.tmp"))


def test_sections_of_other_producers_survive_a_rewrite(tmp_path):
    first = Report("Run x")
    first.section("evaluation-test", "Evaluation on test").add_text("accuracy 0.5")
    first.section("analysis-weights", "Analysis: weights").add_text("change 0.1")
    first.write(tmp_path)
    again = Report("ignored: the file keeps its title")
    again.section("evaluation-test", "Evaluation on test").add_text("accuracy 0.7")
    again.section("analysis-features", "Analysis: features").add_text("separability 0.9")
    md_path, html_path = again.write(tmp_path)
    md = md_path.read_text()
    assert md.startswith("# Run x\n") and md.count("## Evaluation on test") == 1
    assert "accuracy 0.7" in md and "accuracy 0.5" not in md
    assert md.index("Analysis: weights") < md.index("Analysis: features")  # kept in place, new one appended
    assert "transferkit:" not in html_path.read_text() and "separability 0.9" in html_path.read_text()


def test_rich_output_is_literal_text():
    from rich.console import Console

    from transferkit.report import Table

    t = Table(
        ["dataset"], [["digits[0,3]"]], title="tasks of shapes[circle,ring]", note="T1 = textures[dots,blobs]"
    )
    console = Console(record=True, width=120)
    console.print(t.to_rich())
    out = "".join(console.export_text().split())  # the title and caption wrap to the table's width
    assert "digits[0,3]" in out and "shapes[circle,ring]" in out and "textures[dots,blobs]" in out
