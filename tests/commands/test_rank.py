import json

import pytest

from transferkit.cli import main as cli_main
from transferkit.commands.rank import main

TINY = ["--image_size", "16"]
MODEL_OPTS = [
    "--encoder", "vit-micro", "--max_samples", "30", "--stats_dim", "1024", "--stats_slots", "16", "--code_dim", "16",
    "--ae_hidden", "64", "--d_model", "16", "--heads", "2", "--layers", "1", "--ae_epochs", "5", "--epochs", "5",
]  # fmt: skip


def test_train_list(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "autoencoder" in out and "RankerTrainer" in out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert cli_main(["rank", "--data", "digits", "--backbones", "vit-micro", "--scores", "logmee"]) == 2
    assert "unknown score 'logmee'" in capsys.readouterr().err
    assert cli_main(["rank", "--data", str(tmp_path / "nope"), "--backbones", "vit-micro"]) == 2
    assert "neither 'digits'" in capsys.readouterr().err
    assert cli_main(["rank", "train", "ranker", "--runs_dir", str(tmp_path)]) == 2
    assert "no performance table" in capsys.readouterr().err
    assert cli_main(["rank", "train", "nosuch"]) == 2
    assert "unknown trainer 'nosuch'" in capsys.readouterr().err


@pytest.mark.slow
def test_rank_digits_prints_tau_against_compare_accuracies(tmp_path, capsys):
    from transferkit.compare import dataset_identity
    from transferkit.data import ImageClassificationDataModule

    runs = tmp_path / "runs"
    fp = dataset_identity(ImageClassificationDataModule(source="digits", image_size=16))["fingerprint"]
    rows = [
        {
            "dataset": {"name": "digits", "fingerprint": fp, "image_size": 16},
            "backbone": b,
            "metric": "linear_top1",
            "value": v,
        }
        for b, v in (("vit-micro", 0.6), ("convnet-micro", 0.8))
    ]
    runs.mkdir()
    (runs / "performance.json").write_text(json.dumps({"schema": 1, "rows": rows}))
    argv = ["--data", "digits", "--backbones", "vit-micro,convnet-micro", *TINY, "--runs_dir", str(runs)]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--name", "r", "--split", "val"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for score in ("logme", "leep", "nce", "hscore", "hscore_shrinkage", "knn", "sfda", "ensemble"):
        assert score in out
    assert "Kendall tau" in out and "weighted tau" in out
    result = json.loads((runs / "r" / "rank.json").read_text())
    assert result["accuracy"] == {"vit-micro": 0.6, "convnet-micro": 0.8} and result["accuracy_exact_match"]
    assert set(result["correlations"]) >= {"logme", "ensemble"}
    for c in result["correlations"].values():
        assert (
            c["kendall_tau"] in (-1.0, 1.0) or c["kendall_tau"] != c["kendall_tau"]
        )  # 2 models: +-1 (or nan)
    assert (runs / "r" / "report.md").is_file() and (runs / "r" / "report.html").is_file()
    scores = json.loads((runs / "transferability.json").read_text())["rows"]
    assert {r["model"] for r in scores} == {"vit-micro", "convnet-micro"} and scores[0]["dataset"] == fp
    # a second run re-uses the cached features
    assert main([*argv, "--scores", "logme"]) == 0
    assert json.loads((runs / "r" / "rank.json").read_text())["backbones"]["vit-micro"]["cache_hit"]


@pytest.mark.slow
def test_benchmark_train_rank_with_ranker_and_evaluate(tmp_path, capsys):
    runs, cache = tmp_path / "runs", str(tmp_path / "cache")
    bench = runs / "bench"
    common = ["--runs_dir", str(runs), "--cache_dir", cache]
    argv = ["benchmark", "--data", "digits", "--backbones", "vit-micro,convnet-micro", *TINY]
    assert main([*argv, "--tasks", "3", "--classes_per_task", "3", "--out", str(bench), *common]) == 0
    rows = json.loads((bench / "performance.json").read_text())["rows"]
    assert len(rows) == 6 and all(0 <= r["value"] <= 1 and len(r["dataset"]["classes"]) == 3 for r in rows)
    assert len(json.loads((bench / "transferability.json").read_text())["rows"]) == 6

    table = ["--table", str(bench / "performance.json")]
    assert main(["train", "Ranker", *table, *MODEL_OPTS, *common, "--name", "learned"]) == 0
    learned = runs / "learned"
    for sub in ("autoencoder", "ranker"):
        assert (learned / sub / "model.pt").is_file() and (learned / sub / "loss_curves.png").is_file()
        assert json.loads((learned / sub / "history.json").read_text())["epochs"]
    assert json.loads((learned / "ranker.json").read_text())["settings"]["encoder"] == "vit-micro"

    argv = [
        "--data",
        "digits",
        "--backbones",
        "vit-micro,convnet-micro",
        *TINY,
        "--scores",
        "logme,knn",
        "--split",
        "val",
    ]
    assert main([*argv, "--ranker", str(learned), *common, "--name", "r"]) == 0
    assert "learned" in json.loads((runs / "r" / "rank.json").read_text())["scores"]

    assert main(["evaluate", *table, *MODEL_OPTS, *common, "--name", "ev"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-dataset-out over 3 datasets" in out
    lodo = json.loads((runs / "ev" / "lodo.json").read_text())
    assert set(lodo["summary"]) >= {"ranker", "random", "logme", "sfda"}
    assert lodo["summary"]["ranker"]["datasets"] == 3
