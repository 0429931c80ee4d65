"""The fair-comparison runner: results.json, metrics.json, report numbers, gains and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferkit.compare import (
    CompareResults,
    FinetuneOptions,
    KnnOptions,
    ProbeOptions,
    parse_backbones,
    run_compare,
    wilson_ci,
)
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
        # poolings x last 1/4 blocks x learning rates (3, or more when the grid extended at an edge) x 4 decays
        lrs = e["linear"]["learning_rates"]
        assert len(lrs) >= 3 and (len(lrs) > 3) == (e["linear"]["extensions"] > 0)
        assert len(e["linear"]["grid"]) == len(e["linear"]["poolings"]) * 2 * len(lrs) * 4
        speed = e["throughput"]
        assert e["throughput_img_s"] == speed["images_per_s"] > 0 and speed["repeats"] == 5
        lo, hi = speed["images_per_s_range"]
        assert lo <= speed["images_per_s"] <= hi and speed["threads"] >= 1 and "load_avg_1m" in speed
        assert all(not f["cache_hit"] for f in e["features"].values())
    minilm = on_disk["backbones"][0]
    assert minilm["pretrained"] and minilm["modality"] == "language" and minilm["num_params"] > 10e6
    assert on_disk["backbones"][2]["modality"] == "vision"
    html = (run_dir / "report.html").read_text()
    assert "minilm-l6:random" in html and html.count("data:image/png;base64,") == 3
    for plot in on_disk["plots"].values():
        assert (run_dir / plot).is_file()
    assert results.dataset["counts"] == {"train": 200, "val": 80, "test": 80}
    assert json.loads(json.dumps(CompareResults.from_dict(on_disk).to_dict())) == on_disk  # one to/from pair
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for e in on_disk["backbones"]:
        assert metrics["backbones"][e["name"]]["linear_probe"]["test_acc1"] == e["linear"]["test_acc1"]
        assert metrics["backbones"][e["name"]]["knn"]["test_ci95"] == e["knn"]["test_ci95"]
    assert metrics["dataset"]["key"] == results.dataset["key"]
    # the doubts of results.json are the report's, each with its rule
    md = (run_dir / "report.md").read_text()
    assert [d.to_dict() for d in results.doubts] == on_disk["doubts"] == metrics["doubts"]
    for d in on_disk["doubts"]:
        assert f"- *{d['kind']}*: {d['message']}." in md and d["kind"] in on_disk["protocol"]["rules"]
    for e in on_disk["backbones"]:  # the grid's edge, found here while the grid does not report it
        edge = e["linear"]["lr_edge"]
        assert (edge is not None) == any(
            d["kind"] == "lr_edge" and d["backbone"] == e["name"] for d in on_disk["doubts"]
        )


def test_pretrained_next_to_random_twin_and_fair_pairs(compared):
    results, run_dir, _ = compared
    on_disk = json.loads((run_dir / "results.json").read_text())
    (gain,) = on_disk["pretraining_gains"]
    by_name = {e["name"]: e for e in on_disk["backbones"]}
    assert gain["backbone"] == "minilm-l6" and gain["random_twin"] == "minilm-l6:random"
    for protocol in ("linear", "logreg", "knn"):  # every protocol that ran
        assert gain[f"{protocol}_gain"] == pytest.approx(
            by_name["minilm-l6"][protocol]["test_acc1"] - by_name["minilm-l6:random"][protocol]["test_acc1"]
        )
        assert 0.0 <= gain[f"{protocol}_p"] <= 1.0
    gains = parse_markdown_table(
        (run_dir / "report.md").read_text(),
        "Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)",
    )
    rows = {r["protocol"].removesuffix(" (claims)"): r for r in gains}
    assert list(rows) == ["linear-probe grid", "logistic regression", "kNN"]
    assert rows["linear-probe grid"]["pretrained"] == percent(gain["linear_pretrained"])
    assert rows["kNN"]["p"] == format(gain["knn_p"], ".3g")
    claims = results.strongest_linear.label
    assert [r["protocol"] for r in gains if r["protocol"].endswith(" (claims)")] == [f"{claims} (claims)"]
    lo, hi = by_name["minilm-l6"]["linear"]["test_ci95"]
    assert lo < by_name["minilm-l6"]["linear"]["test_acc1"] < hi
    # vit-micro (vision) is the only partner of both language backbones, and vice versa
    pairs = {(p.backbone, p.partner) for p in results.fair_pairs}
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
    (entry,) = again.backbones
    first = results.backbone("vit-micro")
    assert all(f["cache_hit"] for f in entry.features.values())
    assert entry.throughput_img_s > 0  # measured in this run, although nothing was extracted
    assert entry.linear.test_acc1 == first.linear.test_acc1  # same features, same seed
    rows = ResultsTable(tmp / "runs" / "performance.json").read()
    assert len(rows) == 3 * 3  # the second vit-micro rows replaced the first ones
    assert {(r.protocol, r.metric) for r in rows} == {
        ("linear_probe", "top1"), ("knn", "top1"), ("logistic_regression", "top1")
    }  # fmt: skip
    r = next(r for r in rows if r.backbone == "vit-micro" and r.protocol == "linear_probe")
    assert r.value == entry.linear.test_acc1 and r.run == "again" and r.extra["num_params"] > 0
    assert r.dataset_key == results.dataset["key"] and r.dataset_name == "imagefolder:digits"
    assert DataSpec.from_dict(r.dataset["spec"]).key() == r.dataset_key  # the row rebuilds its dataset


def test_pairwise_table_and_a_best_only_when_significant(compared):
    results, run_dir, _ = compared
    assert len(results.pairwise) == 3 * 3  # pairs x (grid, logistic regression, kNN)
    md = (run_dir / "report.md").read_text()
    rows = parse_markdown_table(
        md, "Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)"
    )
    assert len(rows) == 3 and all(
        0 <= float(r[f"{p} p"]) <= 1 for r in rows for p in ("linear", "logreg", "knn")
    )
    # 80 test images: a best is named only when it beats both others significantly, under the linear protocol
    # stronger on val (named in the claim)
    strongest = results.strongest_linear
    for protocol, label in ((strongest.protocol, f"inear probe ({strongest.label}"), ("knn", "kNN")):
        lead = leaders(results.backbones, results.pairwise, protocol)
        said = [
            line for line in md.splitlines() if label in line and ("Best" in line or "no significant" in line)
        ]
        assert said and ("no significant difference" in said[0]) == bool(lead.ties), said
        assert f"**{lead.best}**" in said[0]


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
    (entry,) = results.backbones
    sd = entry.seeds
    assert sd["seeds"] == [3, 4, 5] and len(sd["linear"]["values"]) == 3
    assert sd["linear"]["values"][0] == entry.linear.test_acc1  # the first seed is the run's own
    assert sd["logreg"]["values"][0] == entry.logreg.test_acc1  # every protocol that ran
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


@pytest.mark.slow
def test_a_finetune_on_digits_reaches_the_probe_or_is_flagged_unconverged(tmp_path):
    """A real, short fine-tune (vit-micro, 2 epochs of 6 batches at 32 px) through compare: its per-epoch history
    is read from the fit run's logs, the convergence rule judges it, and a fine-tune below the probe says so."""
    results = run_compare(
        DataSpec({"source": "digits", "image_size": 32}),
        "vit-micro",
        run=RunDir.create(tmp_path / "runs", "ft", "compare"),
        probe=ProbeOptions(
            epochs=10, learning_rates=[0.1, 1.0], layers=[1], weight_decays=[0.0], logreg=False
        ),
        knn=KnnOptions(ks=[10]),
        finetune=FinetuneOptions(epochs=2, limit_train_batches=6),
        extract=ExtractOptions(cache_dir=str(tmp_path / "cache"), progress=False),
    )
    (b,) = results.backbones
    ft, probe = b.finetune, b.best_linear()
    assert [h.epoch for h in ft.history] == [0, 1]
    assert all(h.train_loss > 0 and 0 <= h.val_acc1 <= 1 for h in ft.history)
    assert ft.converged is not None and ft.convergence
    kinds = {d.kind for d in results.doubts}
    assert ft.test_acc1 >= probe.test_acc1 or "finetune_unconverged" in kinds, (ft, probe)
    assert ("finetune_below_probe" in kinds) == (ft.test_acc1 < probe.test_acc1)
    assert ("finetune_unconverged" in kinds) == (not ft.converged)
    # its per-image test results (for the McNemar tests) are the fit's own: the same accuracy
    n = results.dataset["counts"]["test"]
    assert ft.test_ci95 == pytest.approx(wilson_ci(round(ft.test_acc1 * n), n))
    # the recipe of configs/classification/finetune.yaml, gradient clipping included, and how it differs
    saved = yaml.safe_load((Path(ft.run_dir) / "config.yaml").read_text())
    assert saved["trainer"]["gradient_clip_val"] == 1.0 and saved["trainer"]["precision"] == "32-true"
    assert saved["data"]["init_args"]["image_size"] == 32 == ft.image_size
    md = (tmp_path / "runs" / "ft" / "report.md").read_text()
    protocol = md.split("## Protocol", 1)[1]
    assert "gradient clipping at norm 1" in protocol and "It differs from the preset in: epochs 2" in protocol
    for d in results.doubts:
        assert f"- *{d.kind}*: {d.message}." in md
    rows = parse_markdown_table(md, "Fine-tune per epoch (mean train loss, val top-1 %) and convergence")
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[1]["converged"].split(":")[0] in ("yes", "no")
