"""The fair-comparison runner: results.json, report numbers, pairs, gains and the performance table."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.compare import (
    KnnOptions,
    ProbeOptions,
    append_performance,
    fair_pairs,
    mcnemar_p,
    parse_backbones,
    pretraining_gains,
    read_performance,
    run_compare,
    wilson_ci,
)
from transferkit.data import ImageClassificationDataModule
from transferkit.errors import UserError
from transferkit.report import parse_markdown_table, percent


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
    dm = ImageClassificationDataModule(source="imagefolder", path=str(data), image_size=32)
    run_dir = tmp / "runs" / "cmp"
    results = run_compare(
        dm,
        "minilm-l6,minilm-l6:random,vit-micro",
        run_dir=run_dir,
        probe=ProbeOptions(epochs=15, learning_rates=[0.01, 0.1, 1.0], layers=[1, 2]),
        knn=KnnOptions(ks=[5, 20]),
        cache_dir=tmp / "cache",
        performance_table=tmp / "runs" / "performance.json",
        progress=False,
    )
    return results, run_dir, tmp


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
        assert len(e["linear"]["grid"]) == len(e["linear"]["poolings"]) * 2 * 3
        assert e["throughput_img_s"] > 0 and not e["throughput_cached"]
        assert all(not f["cache_hit"] for f in e["features"].values())
    minilm = on_disk["backbones"][0]
    assert minilm["pretrained"] and minilm["modality"] == "language" and minilm["num_params"] > 20e6
    assert on_disk["backbones"][2]["modality"] == "vision"
    html = (run_dir / "report.html").read_text()
    assert "minilm-l6:random" in html and html.count("data:image/png;base64,") == 3
    for plot in on_disk["plots"].values():
        assert (run_dir / plot).is_file()
    assert results["dataset"]["counts"] == {"train": 200, "val": 80, "test": 80}


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


def test_second_run_reads_the_cache_and_appends_performance(compared):
    results, _, tmp = compared
    dm = ImageClassificationDataModule(source="imagefolder", path=str(tmp / "digits"), image_size=32)
    again = run_compare(
        dm,
        ["vit-micro"],
        run_dir=tmp / "runs" / "again",
        probe=ProbeOptions(epochs=15, learning_rates=[0.01, 0.1, 1.0], layers=[1, 2]),
        knn=KnnOptions(ks=[5, 20]),
        cache_dir=tmp / "cache",
        performance_table=tmp / "runs" / "performance.json",
        progress=False,
    )
    (entry,) = again["backbones"]
    first = next(e for e in results["backbones"] if e["name"] == "vit-micro")
    assert all(f["cache_hit"] for f in entry["features"].values()) and entry["throughput_cached"]
    assert entry["linear"]["test_acc1"] == first["linear"]["test_acc1"]  # same features, same seed
    table = read_performance(tmp / "runs" / "performance.json")
    assert table["schema"] == 1 and len(table["rows"]) == 3 * 2 + 2
    row = table["rows"][0]
    assert set(row) >= {"dataset", "backbone", "metric", "value", "split", "pretrained", "num_params"}
    assert (
        row["dataset"]["fingerprint"] == results["dataset"]["fingerprint"]
        and row["dataset"]["name"] == "imagefolder:digits"
    )
    assert {r["metric"] for r in table["rows"]} == {"linear_top1", "knn_top1"}


def test_fair_pairs_match_closest_size_across_modalities():
    def entry(name, modality, params, lin):
        return {"name": name, "modality": modality, "num_params": params, "linear": {"test_acc1": lin},
                "knn": {"test_acc1": lin - 0.1}, "pretrained": True}  # fmt: skip

    entries = [
        entry("openai-community/gpt2-medium", "language", 355_000_000, 0.70),
        entry("facebook/dinov2-large", "vision", 304_000_000, 0.90),
        entry("facebook/dinov2-small", "vision", 22_000_000, 0.85),
        entry("minilm-l6", "language", 22_700_000, 0.60),
    ]
    pairs = {p["backbone"]: p for p in fair_pairs(entries)}
    gpt2 = pairs["openai-community/gpt2-medium"]
    assert gpt2["partner"] == "facebook/dinov2-large"
    assert gpt2["size_ratio"] == pytest.approx(355 / 304) and gpt2["size_gap"] == pytest.approx(51 / 304)
    assert gpt2["linear_delta"] == pytest.approx(-0.20)
    assert pairs["minilm-l6"]["partner"] == "facebook/dinov2-small"
    assert pairs["facebook/dinov2-small"]["partner"] == "minilm-l6"
    assert fair_pairs(entries[:1]) == [] and pretraining_gains(entries) == []


def test_performance_table_appends_from_concurrent_writers(tmp_path):
    """flock serialises writers holding separate open files (threads here, processes alike)."""
    path = tmp_path / "performance.json"

    def append(worker: int) -> None:
        for i in range(5):
            append_performance(path, [{"worker": worker, "i": i}])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append, range(4)))
    rows = read_performance(path)["rows"]
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(5)]
    path.write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        read_performance(path)


def test_parse_backbones():
    assert parse_backbones("a, b,a") == ["a", "b"]
    assert parse_backbones(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(UserError, match="no backbones"):
        parse_backbones(" , ")


def test_mcnemar_and_wilson():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 70 + [False] * 30)
    assert mcnemar_p(a, b) < 1e-4  # 20 discordant pairs, all one way
    assert mcnemar_p(a, a) == 1.0
    lo, hi = wilson_ci(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95  # Wilson 95% interval of 90/100: [0.826, 0.945]
