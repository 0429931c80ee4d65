"""The answer users read, on fixed numbers: the strongest linear protocol carries the headline, and every doubt
(learning rate on the grid's edge, linear protocols that disagree, a fine-tune that had not converged or trails
the probe) is said in results.json, the report and metrics.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from transferkit.compare.doubts import (
    DISAGREEMENT_POINTS,
    DOUBT_RULES,
    STRONGEST_LINEAR_RULE,
    finetune_convergence,
    lr_edge,
    strongest_linear,
)
from transferkit.compare.options import FINETUNE_PRESET, FinetuneOptions, ProbeOptions
from transferkit.compare.report import headline
from transferkit.compare.results import CompareResults, EpochRecord, FinetuneResult
from transferkit.compare.runner import _grid_result, read_fit_history, summarize, write_run
from transferkit.compare.stats import leaders
from transferkit.report import parse_markdown_table
from transferkit.runs import RunDir

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def run_of(fixed, backbones, tmp_path=None) -> CompareResults:
    """The run's results from fixed backbones (and, given ``tmp_path``, its files written there)."""
    results = summarize(
        [b for b, _ in backbones],
        {b.name: c for b, c in backbones},
        run="fixed",
        dataset=fixed.dataset,
        protocol=fixed.protocol,
    )
    if tmp_path is not None:
        run = RunDir.create(tmp_path, "fixed", "compare")
        write_run(results, run)
        results.extra["_dir"] = run.path  # for the test only (never written)
    return results


def summary_of(md: str) -> str:
    return md.split("## Summary", 1)[1].split("**Backbones on", 1)[0]


def test_an_edge_learning_rate_and_a_protocol_disagreement_are_in_results_json_and_the_report(
    fixed, tmp_path
):
    # a: best LR 1 = the top of the grid, and the logistic regression 10 points above its grid;
    # a and b swap places between the two linear protocols
    a = fixed.backbone("a", linear=(0.80, 0.80), logreg=(0.91, 0.90), lr=1.0, lr_edge="high")
    b = fixed.backbone("b", linear=(0.82, 0.82), logreg=(0.84, 0.83))
    c = fixed.backbone("c", linear=(0.60, 0.60), logreg=(0.61, 0.61), lr=0.1)
    results = run_of(fixed, [a, b, c], tmp_path)
    run_dir = results.extra.pop("_dir")
    on_disk = json.loads((run_dir / "results.json").read_text())
    kinds = [(d["kind"], d["backbone"]) for d in on_disk["doubts"]]
    assert kinds == [("lr_edge", "a"), ("protocol_disagreement", "a"), ("protocol_disagreement", None)]
    edge, gap, order = on_disk["doubts"]
    assert "best learning rate, 1, is the highest of the grid (0.01..1)" in edge["message"]
    assert "10.00 points" in gap["message"] and f"more than {DISAGREEMENT_POINTS:g}" in gap["message"]
    assert "the grid ranks b above a, the logistic regression below" in order["message"]
    assert on_disk["backbones"][0]["linear"]["lr_edge"] == "high"
    assert on_disk["backbones"][0]["linear"]["learning_rates"] == [0.01, 0.1, 1.0]
    assert on_disk["protocol"]["rules"]["protocol_disagreement"] == DOUBT_RULES["protocol_disagreement"]
    # the report: a Doubts paragraph right under the claims, the rules under Protocol, the edge in the grid table
    md = (run_dir / "report.md").read_text()
    summary = summary_of(md)
    assert summary.index("- Best linear probe") < summary.index("**Doubts** (3;") < len(summary)
    for d in on_disk["doubts"]:
        assert f"- *{d['kind']}*: {d['message']}." in summary
    protocol_section = md.split("## Protocol", 1)[1]
    assert f"*lr_edge*: {DOUBT_RULES['lr_edge']}" in protocol_section
    grid = parse_markdown_table(md, "Linear-probe grid: best learning rate per feature variant (val top-1 %)")
    assert [r["lr on edge"] for r in grid if r["chosen"] == "yes"] == ["high", "", ""]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["doubts"] == on_disk["doubts"] and metrics["strongest_linear"] == "logreg"
    # and a run without reasons to doubt says so
    quiet = run_of(fixed, [fixed.backbone("a", linear=(0.8, 0.8), logreg=(0.8, 0.81))], tmp_path / "quiet")
    md = (quiet.extra.pop("_dir") / "report.md").read_text()
    assert quiet.doubts == [] and "**Doubts**: none by the rules under Protocol." in summary_of(md)


def test_the_headline_rests_on_the_linear_protocol_stronger_on_val(fixed, tmp_path):
    # the grid says "a" (significantly), the logistic regression, stronger on val, says "b" (significantly)
    a = fixed.backbone("a", linear=(0.80, 0.90), logreg=(0.90, 0.80))
    b = fixed.backbone("b", linear=(0.78, 0.70), logreg=(0.92, 0.95))
    b_random = fixed.backbone("b:random", linear=(0.70, 0.60), logreg=(0.80, 0.70))
    results = run_of(fixed, [a, b, b_random], tmp_path)
    run_dir = results.extra.pop("_dir")
    assert results.strongest_linear.protocol == "logreg"
    assert results.strongest_linear.mean_val_acc1 == pytest.approx({"linear": 0.76, "logreg": 0.8733333})
    assert leaders(results.backbones, results.pairwise, "linear").best == "a"  # the weaker protocol's answer
    md = (run_dir / "report.md").read_text()
    (best,) = [line for line in summary_of(md).splitlines() if "linear probe" in line and "Best" in line]
    assert best.startswith("- Best linear probe (logistic regression, the linear protocol stronger on val")
    assert "**b** (95.00% test top-1" in best and "**a**" not in best
    # the pretrained-vs-twin line uses it too, named
    (twin,) = [line for line in summary_of(md).splitlines() if "random-init twin" in line]
    assert "linear probe (logistic regression) 95.00% vs 70.00%" in twin and "kNN" in twin
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["strongest_linear"] == {
        "protocol": "logreg",
        "mean_val_acc1": pytest.approx({"linear": 0.76, "logreg": 0.8733333}),
        "rule": STRONGEST_LINEAR_RULE,
    }
    # the tables hold every protocol: gains per protocol (the claims' one marked), pairwise per protocol
    gains = parse_markdown_table(
        md, "Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)"
    )
    assert [r["protocol"] for r in gains] == ["linear-probe grid", "logistic regression (claims)", "kNN"]
    pairwise = parse_markdown_table(
        md, "Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)"
    )
    assert {"linear p", "logreg p", "knn p"} <= set(pairwise[0])
    assert on_disk["pretraining_gains"][0]["logreg_gain"] == pytest.approx(0.25)
    assert on_disk["pretraining_gains"][0]["linear_gain"] == pytest.approx(0.10)  # the key readers know
    # a tie on val goes to the grid
    tie = strongest_linear([fixed.backbone("x", linear=(0.8, 0.8), logreg=(0.8, 0.9))[0]])
    assert tie.protocol == "linear"


def test_no_best_is_claimed_without_a_significant_lead(fixed):
    a = fixed.backbone("a", linear=(0.80, 0.80), logreg=(0.90, 0.81))
    b = fixed.backbone("b", linear=(0.80, 0.80), logreg=(0.90, 0.805))  # one image behind: p = 1
    lines = headline(run_of(fixed, [a, b]))
    (linear,) = [line for line in lines if "linear probe" in line.lower()]
    assert (
        linear.startswith("- Linear probe (logistic regression, ") and "no significant difference" in linear
    )


def test_finetune_doubts_unconverged_and_below_the_probe(fixed, tmp_path):
    a, correct = fixed.backbone("a", linear=(0.80, 0.80), logreg=(0.90, 0.90))
    history = [EpochRecord(0, 1.9, 0.40), EpochRecord(1, 1.5, 0.55)]
    converged, reason = finetune_convergence(history)
    a.protocols["finetune"] = FinetuneResult(
        val_acc1=0.55, test_acc1=0.57, test_ci95=(0.5, 0.6), epochs=2, image_size=32, seconds=1.0,
        run_dir=str(tmp_path / "ft"), history=history, converged=converged, convergence=reason,
    )  # fmt: skip
    correct["finetune"] = fixed.correct_of(0.57)
    b = fixed.backbone("b", linear=(0.70, 0.70), logreg=(0.80, 0.80))
    results = run_of(fixed, [(a, correct), b], tmp_path)
    run_dir = results.extra.pop("_dir")
    on_disk = json.loads((run_dir / "results.json").read_text())
    doubts = {d["kind"]: d["message"] for d in on_disk["doubts"]}
    assert "val top-1 still rose +15.00 points" in doubts["finetune_unconverged"]
    assert "had not converged" in doubts["finetune_unconverged"]
    assert (
        doubts["finetune_below_probe"]
        == "a: the fine-tune (57.00%) is below its logistic regression (90.00% test top-1)"
    )
    ft = on_disk["backbones"][0]["finetune"]
    assert ft["converged"] is False and ft["history"][1] == {"epoch": 1, "train_loss": 1.5, "val_acc1": 0.55}
    md = (run_dir / "report.md").read_text()
    rows = parse_markdown_table(md, "Fine-tune per epoch (mean train loss, val top-1 %) and convergence")
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[1]["converged"].startswith(
        "no: val top-1 still rose"
    )
    # the fine-tune has its own claim line; only one backbone fine-tuned, so none here, but it is in the twin
    # table when both twins fine-tuned (see the CLI test) and in the main table
    assert parse_markdown_table(md)[0]["fine-tune top-1"] == "57.00"
    round_trip = CompareResults.from_dict(on_disk)
    assert round_trip.backbones[0].finetune.history == history
    assert json.loads(json.dumps(round_trip.to_dict())) == on_disk


@pytest.mark.parametrize(
    "history, converged, says",
    [
        ([], None, "no per-epoch history"),
        ([EpochRecord(0, 1.0, 0.9)], False, "one epoch cannot show convergence"),
        ([EpochRecord(0, 1.00, 0.90), EpochRecord(1, 0.99, 0.905)], True, "levelled off"),
        ([EpochRecord(0, 1.00, 0.90), EpochRecord(1, 0.80, 0.90)], False, "train loss still fell 20%"),
        (
            [EpochRecord(0, 1.00, 0.90), EpochRecord(1, 0.99, 0.92)],
            False,
            "val top-1 still rose +2.00 points",
        ),
        (
            [EpochRecord(0, 0.9, 0.5), EpochRecord(1, 0.8, 0.90), EpochRecord(2, 0.79, 0.895)],
            True,
            "levelled",
        ),
    ],
)
def test_the_convergence_rule(history, converged, says):
    verdict, reason = finetune_convergence(history)
    assert verdict is converged and says in reason


def test_lr_edge_from_the_grid_or_found_here():
    assert lr_edge(1.0, [0.01, 0.1, 1.0]) == "high" and lr_edge(0.01, [1.0, 0.1, 0.01]) == "low"
    assert lr_edge(0.1, [0.01, 0.1, 1.0]) is None and lr_edge(0.1, [0.1]) is None  # one LR: no grid to leave

    def grid(lr: float, **reported):
        heads = [{"name": f"h{x}", "variant": "v", "lr": x, "val_acc1": 0.5} for x in (0.1, 1.0)]
        metrics = {"acc1": 0.5, "acc5": 1.0, "per_class_acc": [0.5]}
        return SimpleNamespace(val=metrics, test=metrics, best={**heads[0], "lr": lr}, heads=heads,
                               seconds=1.0, config={"learning_rates": [0.1, 1.0]}, **reported)  # fmt: skip

    correct = np.ones(4, bool)
    found = _grid_result(grid(1.0), correct, ["cls"], [1], ProbeOptions())
    assert found.lr_edge == "high" and found.extensions == 0 and found.learning_rates == [0.1, 1.0]
    # a grid that extended itself reports its final learning rates, extensions and edge: those are kept
    extended = grid(1.0, learning_rates=[0.1, 1.0, 10.0], extensions=1, lr_edge=None)
    kept = _grid_result(extended, correct, ["cls"], [1], ProbeOptions())
    assert kept.lr_edge is None and kept.extensions == 1 and kept.learning_rates == [0.1, 1.0, 10.0]


def test_fit_history_is_read_from_the_fit_runs_csv_log(tmp_path):
    log = tmp_path / "log" / "version_0"
    log.mkdir(parents=True)
    # what a 2-epoch fit writes (Lightning's CSVLogger), then the best checkpoint's validate and test
    (log / "metrics.csv").write_text(
        "epoch,step,test/acc1,test/acc5,test/loss,train/loss_epoch,train/loss_step,val/acc1,val/acc5,val/loss\n"
        "0,2,,,,,,0.0972,0.5333,2.3042\n"
        "0,2,,,,2.3037,,,,\n"
        "1,4,,,,,2.3021,,,\n"
        "1,5,,,,,,0.1027,0.5555,2.2952\n"
        "1,5,,,,2.2980,,,,\n"
        "2,6,,,,,,0.1027,0.5555,2.2952\n"
        "2,6,0.1111,0.5444,2.2952,,,,,\n"
    )
    assert read_fit_history(tmp_path) == [EpochRecord(0, 2.3037, 0.0972), EpochRecord(1, 2.2980, 0.1027)]
    assert read_fit_history(tmp_path / "nowhere") == []


def test_finetune_options_follow_the_preset_and_say_how_they_differ():
    cfg = yaml.safe_load((ROOT / "configs" / "classification" / "finetune.yaml").read_text())
    opt, trainer = cfg["model"]["init_args"]["optimizer"], cfg["trainer"]
    assert FINETUNE_PRESET == {
        "epochs": trainer["max_epochs"],
        "batch_size": cfg["data"]["init_args"]["batch_size"],
        "blr": opt["blr"],
        "weight_decay": opt["weight_decay"],
        "layer_decay": opt["layer_decay"],
        "warmup_epochs": opt["warmup_epochs"],
        "label_smoothing": cfg["model"]["init_args"]["regularization"]["label_smoothing"],
        "patch_embed_lr_mult": opt["lr_mult"]["patch_embed"],
        "gradient_clip_val": trainer["gradient_clip_val"],
        "precision": trainer["precision"],
        "image_size": cfg["data"]["init_args"]["image_size"],
    }
    defaults = FinetuneOptions()
    assert all(
        getattr(defaults, k) == v
        for k, v in FINETUNE_PRESET.items()
        if hasattr(defaults, k) and k != "image_size"
    )
    assert [d for d in defaults.differences_from_preset(32) if not d.startswith("patch_embed")] == []
    differs = FinetuneOptions(epochs=1, gradient_clip_val=0, limit_train_batches=4).differences_from_preset(
        64
    )
    assert differs[:4] == [
        "image size 64 (the compared data's; the preset: 32)",
        "epochs 1 (the preset: 3)",
        "gradient_clip_val 0 (the preset: 1)",
        "limit_train_batches 4 (the preset: every batch)",
    ]


def test_the_twin_lines_and_tables_hold_the_finetune_too(fixed, tmp_path):
    def finetuned(name, acc, epochs=(1.0, 0.99)):
        b, correct = fixed.backbone(name, linear=(0.6, 0.6), logreg=(0.6, 0.6))
        history = [EpochRecord(i, loss, acc) for i, loss in enumerate(epochs)]
        b.protocols["finetune"] = FinetuneResult(
            val_acc1=acc, test_acc1=acc, test_ci95=(acc - 0.05, acc + 0.05), epochs=2, image_size=32,
            seconds=1.0, run_dir="ft", history=history, converged=True, convergence="levelled off",
        )  # fmt: skip
        return b, {**correct, "finetune": fixed.correct_of(acc)}

    results = run_of(fixed, [finetuned("m", 0.95), finetuned("m:random", 0.80)], tmp_path)
    md = (results.extra.pop("_dir") / "report.md").read_text()
    (twin,) = [line for line in summary_of(md).splitlines() if "random-init twin" in line]
    assert "fine-tune 95.00% vs 80.00% (+15.00 points, pretraining helps" in twin
    assert "- Best fine-tune: **m** (95.00% test top-1" in summary_of(md)
    gains = parse_markdown_table(
        md, "Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)"
    )
    assert [r["protocol"] for r in gains][-1] == "fine-tune" and float(gains[-1]["p"]) < 1e-6
    pairwise = parse_markdown_table(
        md, "Pairwise: a minus b in test top-1 points, exact McNemar p (same test images, uncorrected)"
    )
    assert pairwise[0]["finetune delta"] == "+15.00"
    assert not [d for d in results.doubts if d.kind.startswith("finetune")]  # converged, above the probes
