"""``transferkit compare`` end to end from the CLI on built-in data and real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferkit.cli import main
from transferkit.report import parse_markdown_table, percent

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = str(ROOT / "configs" / "compare" / "default.yaml")


def write_folder(root: Path) -> Path:
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
def test_default_compare_pretrained_language_and_vision_models_next_to_their_twins(tmp_path, capsys):
    """The README's main job: the default config on the built-in shapes (probe epochs cut from 100 to 20 to
    fit the test budget; everything else as shipped)."""
    code = main(["compare", "--config", DEFAULT, "--runs_dir", str(tmp_path / "runs"), "--probe.epochs", "20",
                 "--cache_dir", str(tmp_path / "cache"), "--progress", "false"])  # fmt: skip
    assert code == 0
    run = tmp_path / "runs" / "compare"
    for f in ("config.yaml", "results.json", "report.md", "report.html", "plots/acc_vs_params.png",
              "plots/acc_vs_throughput.png", "plots/per_class_accuracy.png"):  # fmt: skip
        assert (run / f).is_file(), f
    results = json.loads((run / "results.json").read_text())
    by_name = {e["name"]: e for e in results["backbones"]}
    names = ["minilm-l6", "minilm-l6:random", "efficientnet-lite0", "efficientnet-lite0:random"]
    assert list(by_name) == names
    assert by_name["minilm-l6"]["pretrained"] and not by_name["minilm-l6:random"]["pretrained"]
    assert (
        by_name["efficientnet-lite0"]["modality"] == "vision"
        and by_name["minilm-l6"]["modality"] == "language"
    )
    for e in by_name.values():  # chance is 1/6
        assert max(e["linear"]["test_acc1"], e["logreg"]["test_acc1"]) > 0.2
    assert min(by_name["efficientnet-lite0"][p]["test_acc1"] for p in ("linear", "logreg", "knn")) > 0.9
    # the answer is visible: ImageNet pretraining buys tens of points on shapes, significantly
    gains = {g["backbone"]: g for g in results["pretraining_gains"]}
    assert set(gains) == {"minilm-l6", "efficientnet-lite0"}
    lite = gains["efficientnet-lite0"]
    assert lite["random_twin"] == "efficientnet-lite0:random"
    assert lite["logreg_gain"] > 0.3 and lite["logreg_p"] < 1e-6
    # the params column counts what an image forward uses: MiniLM's token-embedding table is left out, and so
    # MiniLM and EfficientNet-Lite0 are a fair pair within 4x
    assert 11e6 < by_name["minilm-l6"]["num_params"] < 11.5e6
    assert any("word_embeddings" in k for k in by_name["minilm-l6"]["left_out_params"])
    pair = next(p for p in results["fair_pairs"] if p["backbone"] == "minilm-l6")
    assert pair["fair"] and pair["partner"].startswith("efficientnet-lite0")
    report = (run / "report.md").read_text()
    rows = {r["backbone"]: r for r in parse_markdown_table(report)}
    for name in names:
        assert rows[name]["linear top-1"] == percent(by_name[name]["linear"]["test_acc1"])
    assert "random-init twin" in report and "left out: minilm-l6: lm.embeddings.word_embeddings" in report
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["backbones"] == names and saved["data"]["source"] == "shapes"
    perf = json.loads((tmp_path / "runs" / "performance.json").read_text())
    assert (
        len(perf["rows"]) == 12 and perf["rows"][0]["dataset"]["name"] == "shapes"
    )  # 4 backbones x 3 protocols
    assert {r["protocol"] for r in perf["rows"]} == {"linear_probe", "knn", "logistic_regression"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["backbones"]["minilm-l6"]["linear_probe"]["test_acc1"]
        == by_name["minilm-l6"]["linear"]["test_acc1"]
    )
    out = capsys.readouterr().out
    assert "efficientnet-lite0:random: linear" in out and str(run / "report.md") in out


@pytest.mark.slow
def test_compare_folder_shorthand_with_finetune(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    args = ["compare", "--data", str(data), "--data.image_size", "32", "--backbones", "vit-micro,gpt2-tiny"]
    args += [
        "--probe.epochs",
        "5",
        "--probe.learning_rates",
        "[0.1]",
        "--knn.ks",
        "[5]",
        "--progress",
        "false",
    ]
    args += ["--finetune.epochs", "1", "--finetune.limit_train_batches", "2"]
    args += ["--runs_dir", str(tmp_path / "runs"), "--name", "ft", "--cache_dir", str(tmp_path / "cache")]
    code = main([*args, "--record_results", "false"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "ft" / "results.json").read_text())
    assert results["dataset"]["source"] == "imagefolder" and results["dataset"]["num_classes"] == 4
    for e in results["backbones"]:
        ft = e["finetune"]
        assert 0.0 <= ft["test_acc1"] <= 1.0 and ft["epochs"] == 1
        # the fine-tune is a fit run: its own folder, config, checkpoints, and the best checkpoint reported
        run = Path(ft["run_dir"])
        assert run.parent == tmp_path / "runs" / "ft" / "finetune"
        assert (run / "config.yaml").is_file() and Path(ft["checkpoint"]).name == "best.ckpt"
        assert json.loads((run / "metrics.json").read_text())["test"]["acc1"] == ft["test_acc1"]
        # one epoch cannot show convergence: said in results.json, the report and on the console
        assert ft["converged"] is False and [h["epoch"] for h in ft["history"]] == [0]
        assert {"backbone": e["name"], "kind": "finetune_unconverged"}.items() <= next(
            d for d in results["doubts"] if d["backbone"] == e["name"] and d["kind"] == "finetune_unconverged"
        ).items()
    # the fine-tune's per-image test results give it McNemar tests like every other protocol
    assert {r["protocol"] for r in results["pairwise"]} == {"linear", "logreg", "knn", "finetune"}
    assert results["protocol"]["finetune"]["gradient_clip_val"] == 1.0
    md = (tmp_path / "runs" / "ft" / "report.md").read_text()
    rows = parse_markdown_table(md)
    assert rows[0]["fine-tune top-1"] == percent(results["backbones"][0]["finetune"]["test_acc1"])
    claims = (
        md.split("## Summary", 1)[1].split("**Doubts**", 1)[0].splitlines()
    )  # the claims, above the doubts
    assert any(line.startswith(("- Fine-tune: no significant", "- Best fine-tune: ")) for line in claims), (
        claims
    )
    assert not (tmp_path / "runs" / "performance.json").exists()
    out = capsys.readouterr().out
    assert (
        "Doubts (" in out
        and "finetune_unconverged: vit-micro: the fine-tune (1 epoch) had not converged" in out
    )


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", "--data", str(tmp_path / "nowhere"), "--runs_dir", str(tmp_path)]) == 2
    assert "neither a data source" in capsys.readouterr().err
    data = write_folder(tmp_path / "data")
    code = main(["compare", "--data", str(data), "--backbones", "dinov9", "--runs_dir", str(tmp_path / "r"),
                 "--cache_dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    # one line, no traceback of ours (the last line; earlier lines are log messages)
    assert err.strip().splitlines()[-1].startswith("error: unknown backbone 'dinov9'")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--probe.learning_rates", "[-0.1]"], "probe.learning_rates must be positive"),
        (["--probe.layers", "[0]"], "probe.layers counts last blocks"),
        (["--probe.poolings", "[max]"], "unknown probe.poolings"),
        (["--knn.ks", "[0]"], "knn.ks must be integers >= 1"),
        (["--knn.temperature", "0"], "knn.temperature must be > 0"),
        (["--seeds", "0"], "seeds must be >= 1"),
        (["--fair_max_ratio", "0.5"], "fair_max_ratio"),
        (["--batch_size", "0"], "batch_size must be >= 1"),
    ],
)
def test_a_bad_compare_option_fails_before_any_extraction(args, says, tmp_path, capsys):
    cache = tmp_path / "cache"
    code = main(
        [
            "compare",
            "--backbones",
            "vit-micro",
            "--runs_dir",
            str(tmp_path / "r"),
            "--cache_dir",
            str(cache),
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and says in err.strip().splitlines()[-1], err
    assert not cache.exists()  # nothing was extracted
