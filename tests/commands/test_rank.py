import json

import pytest

from transferkit.cli import main as cli_main
from transferkit.data.spec import DataSpec
from transferkit.results import ResultRow, ResultsTable, dataset_entry
from transferkit.select.rank_results import RankResults

TINY = ["--data.image_size", "16"]
RANKER = [
    "--ranker.embedding.encoder", "vit-micro", "--ranker.embedding.max_samples", "30",
    "--ranker.embedding.stats_dim", "1024", "--ranker.embedding.stats_slots", "16",
    "--ranker.autoencoder.code_dim", "16", "--ranker.autoencoder.hidden", "[64]",
    "--ranker.model.d_model", "16", "--ranker.model.heads", "2", "--ranker.model.layers", "1",
    "--ranker.autoencoder_train.max_epochs", "5", "--ranker.train.max_epochs", "5",
]  # fmt: skip


def main(argv: list[str]) -> int:
    return cli_main(["rank", *argv])


def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "subcommands: benchmark, zoo, train, evaluate" in out
    assert main(["train", "--help"]) == 0
    assert "autoencoder or ranker" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["--data", "digits", "--backbones", "vit-micro", "--scores", "logmee", "--runs_dir", str(tmp_path)],
         "unknown score 'logmee'"),
        (["--data", str(tmp_path / "nope"), "--backbones", "vit-micro"], "neither a data source"),
        (["--data", "digits", "--backbones", "vit-micro,vit-micro"], "more than once"),
        (["train", "ranker", "--runs_dir", str(tmp_path)], "no results table"),
        (["train", "nosuch"], "unknown trainer 'nosuch'"),
        (["--data", "digits", "--backbone", "vit-micro"], "unknown option '--backbone'"),
        (["--data", "digits", "--backbones", "vit-micro", "--max_latency_ms", "0"], "--max_latency_ms must be > 0"),
        (["--data", "digits", "--backbones", "vit-micro", "--max_memory_mb", "-5"], "--max_memory_mb must be > 0"),
        (["--data", "digits", "--backbones", "vit-micro", "--cost", "false", "--min_images_per_s", "10"],
         "needs --cost true"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def _table(runs, values: dict[str, float]) -> ResultsTable:
    spec = DataSpec({"source": "digits", "image_size": 16})
    entry = dataset_entry(spec.describe())
    table = ResultsTable(runs / "performance.json")
    table.append([ResultRow(entry, b, "linear_probe", "top1", v) for b, v in values.items()])
    return table


@pytest.mark.slow
def test_rank_digits_prints_tau_against_compare_accuracies(tmp_path, capsys):
    runs = tmp_path / "runs"
    table = _table(runs, {"vit-micro": 0.6, "convnet-micro": 0.8})
    argv = ["--data", "digits", "--backbones", "vit-micro,convnet-micro", *TINY, "--runs_dir", str(runs)]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--name", "r", "--split", "val"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for score in ("logme", "leep", "nce", "hscore", "hscore_shrinkage", "knn", "sfda", "ensemble"):
        assert score in out
    assert "n = 2: a rank correlation of 2 backbones is not informative" in out
    run = runs / "r"
    for f in ("config.yaml", "metrics.json", "results.json", "report.md", "report.html", "run.json"):
        assert (run / f).is_file(), f
    result = json.loads((run / "metrics.json").read_text())
    assert result["accuracy"] == {"vit-micro": 0.6, "convnet-micro": 0.8} and result["accuracy_exact_match"]
    assert result["accuracy_target"] == "linear_probe/top1"
    assert set(result["correlations"]) >= {"logme", "ensemble"}
    # results.json is metrics.json without the command, and reads back into the typed results
    saved = json.loads((run / "results.json").read_text())
    assert result == {"command": "rank", **saved}
    typed = RankResults.from_dict(saved)
    assert typed.to_dict() == saved and typed.names == ["vit-micro", "convnet-micro"] and typed.split == "val"
    assert typed.accuracy is not None and typed.accuracy.agreement["ensemble"].n == 2
    scores = table.read(protocol="score")
    assert {r.backbone for r in scores} == {"vit-micro", "convnet-micro"}
    assert {r.metric for r in scores} >= {"logme", "sfda"} and all(r.split == "val" for r in scores)
    # a second run gets its own folder and reads the cached features
    assert main([*argv, "--scores", "logme"]) == 0
    assert json.loads((runs / "r-2" / "metrics.json").read_text())["backbones"]["vit-micro"]["cache_hit"]


@pytest.mark.slow
def test_benchmark_train_rank_with_ranker_and_evaluate(tmp_path, capsys):
    runs, cache = tmp_path / "runs", str(tmp_path / "cache")
    common = ["--runs_dir", str(runs)]
    argv = [
        "benchmark",
        "--data",
        "digits",
        "--backbones",
        "vit-micro,convnet-micro",
        *TINY,
        "--cache_dir",
        cache,
    ]
    assert (
        main([*argv, "--tasks", "3", "--classes_per_task", "3", "--logreg.c_powers", "[-2, 0, 2]", *common])
        == 0
    )
    table = ResultsTable(runs / "performance.json")
    probes = table.read(protocol="logistic_regression")
    assert len(probes) == 6 and all(
        0 <= r.value <= 1 and len(r.dataset["spec"]["classes"]) == 3 for r in probes
    )
    assert {r.metric for r in table.read(protocol="score")} >= {"logme", "leep"}

    assert main(["train", "Ranker", *RANKER, *common, "--cache_dir", cache, "--name", "learned"]) == 0
    learned = runs / "learned"
    for sub in ("autoencoder", "ranker"):
        assert (learned / sub / "model.pt").is_file() and (learned / sub / "loss_curves.png").is_file()
        assert json.loads((learned / sub / "history.json").read_text())["epochs"]
    assert json.loads((learned / "ranker.json").read_text())["settings"]["encoder"] == "vit-micro"

    argv = ["--data", "digits", "--backbones", "vit-micro,convnet-micro", *TINY, "--scores", "logme,knn"]
    argv += ["--split", "val", "--cache_dir", cache]
    assert main([*argv, "--learned_ranker", str(learned), *common, "--name", "r"]) == 0
    assert "learned" in json.loads((runs / "r" / "metrics.json").read_text())["scores"]

    assert main(["evaluate", *RANKER, *common, "--cache_dir", cache, "--name", "ev"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-dataset-out over 3 datasets" in out
    lodo = json.loads((runs / "ev" / "metrics.json").read_text())
    assert set(lodo["summary"]) >= {"ranker", "random", "logme", "sfda"}
    assert lodo["summary"]["ranker"]["datasets"] == 3
    assert (runs / "ev" / "config.yaml").is_file() and (runs / "ev" / "report.md").is_file()


TINY_RANKER = ["--ranker.model.d_model", "16", "--ranker.model.heads", "2", "--ranker.model.layers", "1",
               "--ranker.train.max_epochs", "5"]  # fmt: skip


def test_evaluate_on_a_shipped_public_table(tmp_path, capsys):
    assert main(["evaluate", "--table", "sfda-group1", "--runs_dir", str(tmp_path), *TINY_RANKER]) == 0
    out = capsys.readouterr().out
    assert "sfda (published)" in out and "prior: mean rank" in out and "TencentARC/SFDA" in out
    run = tmp_path / "rank-evaluate"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"prior: mean rank", "prior: parameters", "ranker", "random"} <= set(metrics["summary"])
    assert metrics["summary"]["ranker"]["datasets"] == 11 and metrics["ranker_features"] == [
        "prior: mean rank"
    ]
    assert metrics["reference"]["logme"]["mean"] == pytest.approx(0.509, abs=0.002)
    assert (run / "weighted_tau.png").stat().st_size > 0 and (run / "config.yaml").is_file()
    assert "Weighted tau per dataset" in (run / "report.md").read_text()


def test_evaluate_on_a_table_file_with_score_rows(tmp_path, capsys):
    rows = []
    for d in range(3):
        for m, acc in enumerate([0.9, 0.8, 0.7, 0.6]):
            acc = acc if d != 1 else 1.5 - acc  # one dataset reverses the order
            key = {"key": f"set{d}", "name": f"set{d}"}
            rows.append(
                {"dataset": key, "backbone": f"m{m}", "protocol": "finetune", "metric": "top1", "value": acc}
            )
            rows.append(
                {"dataset": key, "backbone": f"m{m}", "protocol": "score", "metric": "myscore", "value": acc}
            )
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"rows": rows}))
    argv = ["evaluate", "--table", str(path), "--runs_dir", str(tmp_path), "--name", "t", *TINY_RANKER]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "t" / "metrics.json").read_text())["summary"]
    assert summary["myscore"]["weighted_tau"] == pytest.approx(1.0)  # the score equals the accuracy
    assert summary["prior: mean rank"]["datasets"] == 3
    path.write_text("{not json")
    assert main(["evaluate", "--table", str(path), "--runs_dir", str(tmp_path)]) != 0
    assert "is not JSON" in capsys.readouterr().err


def test_cost_is_measured_and_budgets_filter_the_recommendation(tmp_path, capsys):
    argv = ["--data", "digits", "--backbones", "vit-micro,convnet-micro", *TINY, "--runs_dir", str(tmp_path),
            "--scores", "logme,knn", "--progress", "false"]  # fmt: skip
    assert main([*argv, "--name", "free"]) == 0
    free = json.loads((tmp_path / "free" / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert "cost on this machine" in out
    typed = RankResults.from_dict(json.loads((tmp_path / "free" / "results.json").read_text()))
    after = " ".join(out.split()).split("overlapping latency IQRs counting as equal): ")[1]  # unwrapped
    assert typed.recommendation is not None and after.startswith(", ".join(typed.pareto) + " no measured")
    for c in free["cost"].values():
        assert c["images_per_s"] > 0 and c["latency_ms"] > 0 and c["peak_memory_mb"] > 0 and c["gflops"] > 0
    best = min(free["ensemble_rank"], key=free["ensemble_rank"].get)
    assert free["recommendation"]["recommended"] == best and free["recommendation"]["over_budget"] == {}
    assert (tmp_path / "free" / "cost.png").stat().st_size > 0
    assert "Cost on this machine" in (tmp_path / "free" / "report.md").read_text()
    # a memory budget between the two backbones' peaks leaves only the smaller one
    peaks = {n: c["peak_memory_mb"] for n, c in free["cost"].items()}
    small, big = sorted(peaks, key=peaks.get)
    limit = (peaks[small] + peaks[big]) / 2
    assert main([*argv, "--name", "mem", "--max_memory_mb", str(limit)]) == 0
    rec = json.loads((tmp_path / "mem" / "metrics.json").read_text())["recommendation"]
    assert rec["recommended"] == small and list(rec["over_budget"]) == [big]
    assert main([*argv, "--name", "none", "--max_latency_ms", "1e-6"]) == 0
    assert "none (every backbone is over budget)" in capsys.readouterr().out
