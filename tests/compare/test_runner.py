"""The fair-comparison runner: results.json, metrics.json, report numbers, gains and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.compare import KnnOptions, ProbeOptions, parse_backbones, run_compare
from transferkit.compare.stats import leaders
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions
from transferkit.report import parse_markdown_table, percent
from transferkit.results import ResultsTable
from transferkit.runs import RunDir


def write_digits_folder(root: Path, per_split: dict[str, int]) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        start = 0
        for split, n in per_split.items():
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in idx[start : start + n]:
                Image.fromarray(images[i]).save(root / split / str(c) / f"{i}.png")
            start += n
    return root


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    data = write_digits_folder(tmp / "digits", {"train": 20, "val": 8, "test": 8})
    spec = DataSpec({"source": "imagefolder", "path": str(data), "image_size": 32})
    run = RunDir.create(tmp / "runs", "cmp", "compare")
    results = run_compare(
        spec,
        "minilm-l6,minilm-l6:random,vit-micro",
        run=run,
        probe=ProbeOptions(epochs=15, learning_rates=[0.01, 0.1, 1.0], layers=[1, 2]),
        knn=KnnOptions(ks=[5, 20]),
        extract=ExtractOptions(cache_dir=str(tmp / "cache"), progress=False),
        results_table=ResultsTable(tmp / "runs" / "performance.json"),
    )
    return results, run.path, tmp


def test_results_json_and_report_agree(compared):
    results, run_dir, _ = compared
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert [e["name"] for e in on_disk["backbones"]] == ["minilm-l6", "minilm-l6:random", "vit-micro"]
    rows = {r["backbone"]: r for r in parse_markdown_table((run_dir / "report.md").read_text())}
    for e in on_disk["backbones"]:
        row = rows[e["name"]]
        assert row["linear top-1"] == percent(e["linear"]["test_acc1"])
        assert row["kNN top-1"] == percent(e["knn"]["test_acc1"])
        assert row["embed dim"] == str(e["embed_dim"]) and row["best k"] == str(e["knn"]["best_k"])
        # the reported head is the grid's best on val, and the kNN k the best on val
        assert e["linear"]["best_head"]["val_acc1"] == max(h["val_acc1"] for h in e["linear"]["grid"])
        assert e["linear"]["val_acc1"] == pytest.approx(e["linear"]["best_head"]["val_acc1"])
        assert e["knn"]["acc1"]["val"][str(e["knn"]["best_k"])] == max(e["knn"]["acc1"]["val"].values())
        assert len(e["linear"]["grid"]) == len(e["linear"]["poolings"]) * 2 * 3 * 4  # x 4 weight decays
        speed = e["throughput"]
        assert e["throughput_img_s"] == speed["images_per_s"] > 0 and speed["repeats"] == 5
        lo, hi = speed["images_per_s_range"]
        assert lo <= speed["images_per_s"] <= hi and speed["threads"] >= 1 and "load_avg_1m" in speed
        assert all(not f["cache_hit"] for f in e["features"].values())
    minilm = on_disk["backbones"][0]
    assert minilm["pretrained"] and minilm["modality"] == "language" and minilm["num_params"] > 20e6
    assert on_disk["backbones"][2]["modality"] == "vision"
    html = (run_dir / "report.html").read_text()
    assert "minilm-l6:random" in html and html.count("data:image/png;base64,") == 3
    for plot in on_disk["plots"].values():
        assert (run_dir / plot).is_file()
    assert results["dataset"]["counts"] == {"train": 200, "val": 80, "test": 80}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for e in on_disk["backbones"]:
        assert metrics["backbones"][e["name"]]["linear_probe"]["test_acc1"] == e["linear"]["test_acc1"]
        assert metrics["backbones"][e["name"]]["knn"]["test_ci95"] == e["knn"]["test_ci95"]
    assert metrics["dataset"]["key"] == results["dataset"]["key"]


def test_pretrained_next_to_random_twin_and_fair_pairs(compared):
    results, run_dir, _ = compared
    (gain,) = results["pretraining_gains"]
    by_name = {e["name"]: e for e in results["backbones"]}
    assert gain["backbone"] == "minilm-l6" and gain["random_twin"] == "minilm-l6:random"
    assert gain["linear_gain"] == pytest.approx(
        by_name["minilm-l6"]["linear"]["test_acc1"] - by_name["minilm-l6:random"]["linear"]["test_acc1"]
    )
    gains = parse_markdown_table(
        (run_dir / "report.md").read_text(),
        "Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)",
    )
    assert gains[0]["linear (pretrained)"] == percent(gain["linear_pretrained"])
    assert 0.0 <= gain["linear_p"] <= 1.0 and 0.0 <= gain["knn_p"] <= 1.0
    assert gains[0]["kNN p"] == format(gain["knn_p"], ".3g")
    lo, hi = by_name["minilm-l6"]["linear"]["test_ci95"]
    assert lo < by_name["minilm-l6"]["linear"]["test_acc1"] < hi
    # vit-micro (vision) is the only partner of both language backbones, and vice versa
    pairs = {(p["backbone"], p["partner"]) for p in results["fair_pairs"]}
    assert ("minilm-l6", "vit-micro") in pairs and ("minilm-l6:random", "vit-micro") in pairs
    assert ("vit-micro", "minilm-l6") in pairs


def test_second_run_reads_the_cache_and_appends_to_the_results_table(compared):
    results, _, tmp = compared
    spec = DataSpec({"source": "imagefolder", "path": str(tmp / "digits"), "image_size": 32})
    again = run_compare(
        spec,
        ["vit-micro"],
        run=RunDir.create(tmp / "runs", "again", "compare"),
        probe=ProbeOptions(epochs=15, learning_rates=[0.01, 0.1, 1.0], layers=[1, 2]),
        knn=KnnOptions(ks=[5, 20]),
        extract=ExtractOptions(cache_dir=str(tmp / "cache"), progress=False),
        results_table=ResultsTable(tmp / "runs" / "performance.json"),
    )
    (entry,) = again["backbones"]
    first = next(e for e in results["backbones"] if e["name"] == "vit-micro")
    assert all(f["cache_hit"] for f in entry["features"].values())
    assert entry["throughput"]["images_per_s"] > 0  # measured in this run, although nothing was extracted
    assert entry["linear"]["test_acc1"] == first["linear"]["test_acc1"]  # same features, same seed
    rows = ResultsTable(tmp / "runs" / "performance.json").read()
    assert len(rows) == 3 * 3  # the second vit-micro rows replaced the first ones
    assert {(r.protocol, r.metric) for r in rows} == {
        ("linear_probe", "top1"), ("knn", "top1"), ("logistic_regression", "top1")
    }  # fmt: skip
    r = next(r for r in rows if r.backbone == "vit-micro" and r.protocol == "linear_probe")
    assert r.value == entry["linear"]["test_acc1"] and r.run == "again" and r.extra["num_params"] > 0
    assert r.dataset_key == results["dataset"]["key"] and r.dataset_name == "imagefolder:digits"
    assert DataSpec.from_dict(r.dataset["spec"]).key() == r.dataset_key  # the row rebuilds its dataset


def test_pairwise_table_and_a_best_only_when_significant(compared):
    results, run_dir, _ = compared
    assert len(results["pairwise"]) == 3 * 2
    md = (run_dir / "report.md").read_text()
    rows = parse_markdown_table(
        md, "Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)"
    )
    assert len(rows) == 3 and all(0 <= float(r["linear p"]) <= 1 for r in rows)
    # 80 test images: a best is named only when it beats both others significantly
    for protocol, label in (("linear", "inear probe"), ("knn", "kNN")):
        lead = leaders(results["backbones"], results["pairwise"], protocol)
        said = [
            line for line in md.splitlines() if label in line and ("Best" in line or "no significant" in line)
        ]
        assert said and ("no significant difference" in said[0]) == bool(lead["ties"]), said


def test_seeds_give_mean_and_spread(tmp_path):
    data = write_digits_folder(tmp_path / "digits", {"train": 10, "val": 4, "test": 4})
    spec = DataSpec({"source": "imagefolder", "path": str(data), "image_size": 32})
    results = run_compare(
        spec,
        "vit-micro:random",
        run=RunDir.create(tmp_path / "runs", "seeds", "compare"),
        probe=ProbeOptions(epochs=5, learning_rates=[0.1], layers=[1]),
        knn=KnnOptions(ks=[5]),
        extract=ExtractOptions(cache_dir=str(tmp_path / "cache"), progress=False),
        seed=3,
        seeds=3,
    )
    (entry,) = results["backbones"]
    sd = entry["seeds"]
    assert sd["seeds"] == [3, 4, 5] and len(sd["linear"]["values"]) == 3
    assert sd["linear"]["values"][0] == entry["linear"]["test_acc1"]  # the first seed is the run's own
    assert len(set(sd["knn"]["values"])) > 1  # three random inits: three feature sets
    md = (tmp_path / "runs" / "seeds" / "report.md").read_text()
    assert "Over seeds: test top-1 %" in md
    with pytest.raises(UserError, match="seeds must be >= 1"):
        run_compare(spec, "vit-micro", run=RunDir.create(tmp_path / "runs", "x", "compare"), seeds=0)


def test_compare_refuses_a_class_subset(tmp_path):
    with pytest.raises(UserError, match="compare measures whole datasets"):
        run_compare(
            DataSpec({"source": "digits"}, ["1", "2"]),
            ["vit-micro"],
            run=RunDir.create(tmp_path, "x", "compare"),
        )


def test_parse_backbones():
    assert parse_backbones("a, b") == ["a", "b"]
    assert parse_backbones(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(UserError, match="no backbones"):
        parse_backbones(" , ")
    with pytest.raises(UserError, match="names a more than once"):
        parse_backbones("a, b,a")
