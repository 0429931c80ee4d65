"""Every image of a report: embedded in ``report.html`` as a data URI, linked from ``report.md`` relative to its
folder, whether the run directory and the image paths are relative or absolute and whatever the working
directory; checked on the reports of every command that writes one (compare, rank, rank evaluate --table,
evaluate, analyze), run from a working directory other than the run directory's parent."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.report import Report, heatmap

ROOT = Path(__file__).resolve().parents[2]
FT = str(ROOT / "configs" / "classification" / "finetune.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
PNG = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def _markdown_image_links(markdown: str) -> list[str]:
    """The (URL-decoded) targets of every image of ``markdown``, as a CommonMark parser reads them."""
    from markdown_it import MarkdownIt

    links = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        for child in token.children or []:
            if child.type == "image":
                links.append(urllib.parse.unquote(str(child.attrs["src"])))
    return links


def _check_image(data: bytes, mime: str, where: str) -> None:
    if mime == "image/svg+xml":
        assert b"<svg" in data[:2000], where
        return
    assert mime == "image/png" and data[:8] == PNG, (where, mime, data[:8])
    with Image.open(io.BytesIO(data)) as im:
        im.verify()


def check_report_images(run_dir: Path, min_images: int) -> list[bytes]:
    """Assert that ``run_dir/report.html`` holds at least ``min_images`` images, each a data URI of a valid
    PNG/SVG, and that every image link of ``run_dir/report.md`` is relative and names a valid image relative
    to the report's folder (one link per embedded image). Returns the embedded images' bytes."""
    parser = _Images()
    parser.feed((run_dir / "report.html").read_text())
    assert len(parser.srcs) >= min_images, f"{len(parser.srcs)} images in report.html, expected {min_images}"
    images = []
    for src in parser.srcs:
        m = re.fullmatch(r"data:(?P<mime>[\w/+.-]+);base64,(?P<data>[A-Za-z0-9+/=]+)", src)
        assert m, f"not an embedded image: {src[:120]}"
        data = base64.b64decode(m["data"], validate=True)
        _check_image(data, m["mime"], src[:40])
        images.append(data)
    links = _markdown_image_links((run_dir / "report.md").read_text())
    assert len(links) == len(parser.srcs), (links, len(parser.srcs))
    for link in links:
        assert not Path(link).is_absolute() and "://" not in link, link
        path = run_dir / link
        assert path.is_file(), f"report.md links {link}, which is not a file under {run_dir}"
        _check_image(path.read_bytes(), "image/svg+xml" if path.suffix == ".svg" else "image/png", link)
    return images


# ---------------------------------------------------------------------------------------------- the writer
@pytest.mark.parametrize("run_given", ["relative", "absolute"])
@pytest.mark.parametrize("image_given", ["run-relative", "cwd-relative", "absolute"])
def test_images_are_linked_and_embedded_however_paths_are_given(
    tmp_path, monkeypatch, run_given, image_given
):
    run_abs = tmp_path / "project" / "runs" / "r"
    png = heatmap([[0.2, 0.9]], ["a"], ["0", "1"], run_abs / "plots" / "h.png")
    cwd = tmp_path / "elsewhere"  # neither the run directory nor its parent
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = Path(os.path.relpath(run_abs, cwd)) if run_given == "relative" else run_abs
    image = {
        "run-relative": Path("plots/h.png"),
        "cwd-relative": Path(os.path.relpath(png, cwd)),  # what run_dir / "plots" / "h.png" is when relative
        "absolute": png,
    }[image_given]
    report = Report("Run r")
    report.section("plots", "Plots").add_image(image, "a heatmap [of one row]")
    md_path, html_path = report.write(run_dir)
    assert "](plots/h.png)" in md_path.read_text() and 'alt="a heatmap [of one row]"' in html_path.read_text()
    assert check_report_images(run_abs, 1) == [png.read_bytes()]
    assert sorted(p.name for p in (run_abs / "plots").iterdir()) == ["h.png"]  # nothing copied


def test_an_image_outside_the_run_is_copied_in_odd_names_are_escaped_and_svg_embeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = heatmap([[0.5]], ["a"], ["0"], Path("figs") / "a plot (1).png")  # relative to the cwd
    svg = tmp_path / "runs" / "r" / "curve.svg"
    svg.parent.mkdir(parents=True)
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
    )
    report = Report("Run r")
    report.section("plots", "Plots").add_image(outside, "outside").add_image("curve.svg", "svg")
    md_path, html_path = report.write("runs/r")
    md = md_path.read_text()
    assert "![outside](plots/a%20plot%20%281%29.png)" in md and "![svg](curve.svg)" in md
    images = check_report_images(tmp_path / "runs" / "r", 2)
    assert images[0] == outside.read_bytes() and images[1] == svg.read_bytes()
    assert 'src="data:image/svg+xml;base64,' in html_path.read_text()


def test_a_missing_image_is_an_error_not_a_broken_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = Report("Run r")
    report.section("plots", "Plots").add_image("runs/r/plots/nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        report.write("runs/r")


# ------------------------------------------------------------------------------------ the commands' reports
def _digits_folder(root: Path) -> Path:
    """An image folder of 4 digit classes, 10/5/5 train/val/test images each: extraction takes moments."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for c in range(4):
        idx = np.flatnonzero(digits.target == c)
        for split, sl in (("train", slice(0, 10)), ("val", slice(10, 15)), ("test", slice(15, 20))):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in idx[sl]:
                Image.fromarray(images[i]).save(root / split / str(c) / f"{i}.png")
    return root


@pytest.mark.slow
def test_compare_report_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bug's setting: a relative runs_dir, as in `make demo`
    _digits_folder(tmp_path / "data")
    args = ["compare", "--data", "data", "--data.image_size", "16", "--backbones", "vit-micro,convnet-micro"]
    args += ["--probe.epochs", "2", "--probe.learning_rates", "[0.1]", "--probe.logreg", "false"]
    args += ["--knn.ks", "[5]", "--progress", "false", "--record_results", "false"]
    assert main([*args, "--runs_dir", "runs", "--cache_dir", "cache"]) == 0
    check_report_images(tmp_path / "runs" / "compare", 3)


@pytest.mark.slow
def test_rank_cost_and_rank_evaluate_table_report_images(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _digits_folder(tmp_path / "data")
    args = ["rank", "--data", "../data", "--data.image_size", "16", "--backbones", "vit-micro,convnet-micro"]
    args += ["--scores", "logme", "--progress", "false", "--name", "r"]
    assert main([*args, "--runs_dir", "../runs", "--cache_dir", "../cache"]) == 0
    check_report_images(tmp_path / "runs" / "r", 1)  # cost.png
    rows = [  # a 3-dataset table (one dataset reverses the order): leave-one-dataset-out takes moments
        {"dataset": {"key": f"set{d}", "name": f"set{d}"}, "backbone": f"m{m}", "protocol": "finetune",
         "metric": "top1", "value": acc if d != 1 else 1.5 - acc}
        for d in range(3) for m, acc in enumerate([0.9, 0.8, 0.7, 0.6])
    ]  # fmt: skip
    (tmp_path / "table.json").write_text(json.dumps({"rows": rows}))
    tiny = ["--ranker.model.d_model", "16", "--ranker.model.heads", "2", "--ranker.model.layers", "1"]
    args = ["rank", "evaluate", "--table", "../table.json", "--runs_dir", "../runs", "--name", "t", *tiny]
    assert main([*args, "--ranker.train.max_epochs", "2"]) == 0
    check_report_images(tmp_path / "runs" / "t", 1)  # weighted_tau.png


@pytest.mark.slow
def test_evaluate_and_analyze_report_images(tmp_path, monkeypatch):
    """One tiny fit run; evaluate and every analysis add their plots to its report, each run from another
    working directory with a relative ``--run``."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    fit = ["fit", "--config", FT, "--runs_dir", "runs", "--name", "tiny", *QUIET, "--model.backbone.name"]
    fit += ["vit-micro", "--data.image_size", "32", "--trainer.max_epochs", "1"]
    fit += [
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
    ]
    assert main(fit) == 0
    run = tmp_path / "a" / "runs" / "tiny"
    monkeypatch.chdir(tmp_path / "b")
    ev = ["evaluate", "--run", "../a/runs/tiny", "--max_images", "20", "--severities", "[1]"]
    assert main([*ev, "--corruptions", "gaussian_noise,jpeg"]) == 0
    n = 6  # confusion matrix, ROC, PR, reliability, robustness, corruption examples
    check_report_images(run, n)
    fast = {
        "features": (["--num_images", "60"], 1),
        "weights": ([], 2),
        "activations": (["--num_images", "32"], 2),
        "attention": (["--num_images", "2"], 2),
        "landscape": (["--num_images", "32", "--points", "3", "--grid", "3"], 2),
    }
    monkeypatch.chdir(tmp_path / "a" / "runs")
    for what, (args, images) in fast.items():
        assert main(["analyze", what, "--run", "tiny", *args]) == 0, what
        n += images
        check_report_images(run, n)
