"""End-to-end CLI runs on the built-in digits data (real images, real MiniLM weights, CPU)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from transferkit.cli import LIGHTNING_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LP = str(CONFIGS / "classification" / "linear_probe.yaml")
FT = str(CONFIGS / "classification" / "finetune.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# a tiny random-init ViT and a handful of batches: for tests of mechanics, not accuracy
MICRO = [
    "--model.backbone.name",
    "vit-micro",
    "--data.image_size",
    "32",
    "--trainer.limit_train_batches",
    "4",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
]


def fit(tmp_path: Path, config: str, *args: str) -> int:
    return main(["fit", "--config", config, "--runs_dir", str(tmp_path / "runs"), *QUIET, *args])


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_linear_probe_minilm_on_digits_beats_chance(tmp_path):
    assert fit(tmp_path, LP, "--trainer.max_epochs", "2") == 0
    run = tmp_path / "runs" / "linear_probe"
    for f in (
        "config.yaml",
        "metrics.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "log/version_0/metrics.csv",
    ):
        assert (run / f).is_file(), f
    m = read_metrics(run)
    # chance is 0.10; the frozen language model's features separate the digits far better
    assert m["test"]["acc1"] > 0.5, m["test"]
    assert m["val"]["acc1"] > 0.5
    assert set(m["test"]["per_class_acc"]) == {str(i) for i in range(10)}
    assert m["test"]["acc5"] >= m["test"]["acc1"]
    assert m["backbone"]["name"] == "minilm-l6" and m["backbone"]["pretrained"] is True
    assert m["backbone"]["trainable_params"] == 384 * 10 + 10  # only the linear head trains
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"]["name"] == "minilm-l6"
    assert saved["trainer"]["max_epochs"] == 2


@pytest.mark.slow
def test_finetune_minilm_on_digits_above_90(tmp_path):
    assert fit(tmp_path, FT, "--trainer.max_epochs", "2") == 0
    m = read_metrics(tmp_path / "runs" / "finetune")
    assert m["test"]["acc1"] > 0.90, m["test"]
    assert m["adaptation"] == "finetune"
    assert m["backbone"]["trainable_params"] > 10_000_000


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    args = [*MICRO, "--model.optimizer.warmup_epochs", "1", "--trainer.max_epochs", "3"]
    assert fit(tmp_path, FT, *args, "--name", "straight") == 0

    from transferkit.tasks.classification import ImageClassifier

    original = ImageClassifier.on_train_epoch_end if hasattr(ImageClassifier, "on_train_epoch_end") else None

    def interrupt(self):
        if original is not None:
            original(self)
        if self.current_epoch == 1:
            self.trainer.should_stop = True  # the job is killed after epoch 2 of 3

    monkeypatch.setattr(ImageClassifier, "on_train_epoch_end", interrupt, raising=False)
    assert fit(tmp_path, FT, *args, "--name", "resumed") == 0
    monkeypatch.undo()
    first = torch.load(tmp_path / "runs/resumed/checkpoints/last.ckpt", weights_only=False)
    assert first["epoch"] == 1
    assert fit(tmp_path, FT, *args, "--name", "resumed", "--ckpt_path", "last") == 0

    a = torch.load(tmp_path / "runs/straight/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "runs/resumed/checkpoints/last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], msg=k)
    assert read_metrics(tmp_path / "runs/straight")["test"] == read_metrics(tmp_path / "runs/resumed")["test"]


def test_every_config_parses(capsys):
    configs = sorted(CONFIGS.rglob("*.yaml"))
    assert configs
    for cfg in configs:
        command = cfg.read_text().splitlines()[0]
        assert command.startswith("# transferkit "), f"{cfg} must start with the command that runs it"
        words = command.split()[2:]
        subs = words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]  # "rank zoo"
        sub = subs[0]
        assert main([*subs, "--config", str(cfg), "--print_config"]) == 0, cfg
        printed = yaml.safe_load(capsys.readouterr().out)
        if sub in LIGHTNING_COMMANDS:
            assert "model" in printed and "trainer" in printed
        else:  # transferkit's own commands (compare, rank, ...): a non-empty YAML mapping
            assert isinstance(printed, dict) and printed, cfg


def test_overrides_and_print_config(capsys):
    args = ["fit", "--config", LP, "--model.backbone.name", "gpt2-tiny", "--trainer.max_epochs", "3"]
    assert main([*args, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["backbone"]["name"] == "gpt2-tiny"
    assert printed["trainer"]["max_epochs"] == 3


def test_validate_only_checks_without_training(tmp_path, capsys):
    assert fit(tmp_path, LP, "--model.backbone.name", "gpt2-tiny", "--validate_only", "true") == 0
    out = capsys.readouterr().out
    assert "nothing was trained" in out and "ImageClassifier" in out
    assert not (tmp_path / "runs").exists()


def test_unknown_backbone_is_one_clear_line(tmp_path, capsys):
    assert fit(tmp_path, LP, "--model.backbone.name", "dinov9", "--validate_only", "true") == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'dinov9'" in err and "minilm-l6" in err and "Traceback" not in err


def test_bad_config_key_names_the_key(tmp_path, capsys):
    assert fit(tmp_path, LP, "--model.backbone.nmae", "x") == 2
    err = capsys.readouterr().err
    assert "nmae" in err and "--model.backbone.name" in err and len(err.strip().splitlines()) == 1


def test_missing_dataset_dir_names_path_and_fix(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = fit(
        tmp_path, LP, "--data.source", "imagefolder", "--data.path", str(missing), "--validate_only", "true"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_a_run_that_fails_before_any_result_leaves_no_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert fit(tmp_path, LP, "--data.source", "imagefolder", "--data.path", str(missing), "--name", "x") == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()  # so the next run is runs/x, not runs/x-2
    assert fit(tmp_path, LP, "--name", "x", "--ckpt_path", "last") == 2
    assert "no run 'runs" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert (
        main(["test", "--config", LP, "--ckpt_path", str(tmp_path / "no.ckpt"), "--runs_dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint") and len(err.splitlines()) == 1


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_backbones_command_lists_registry(capsys):
    assert main(["backbones", "--offline", "true"]) == 0
    out = capsys.readouterr().out
    assert "minilm-l6" in out and "vit-micro" in out


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tmp_path):
    """Multi-process training goes through Lightning's DDP strategy (gloo on CPU)."""
    cmd = [
        sys.executable,
        "-m",
        "transferkit.cli",
        "fit",
        "--config",
        FT,
        *QUIET,
        *MICRO,
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--runs_dir",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "MEMBER: 2/2" in proc.stderr, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "runs" / "ddp")
    assert 0.0 <= m["test"]["acc1"] <= 1.0
    ckpt = torch.load(tmp_path / "runs/ddp/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # 4 limited batches per process, one optimizer step each


# every command with the fewest arguments it needs (a path that need not exist: --print_config reads nothing)
EVERY_COMMAND = [
    ["fit", "--config", LP],
    ["validate", "--config", LP],
    ["test", "--config", LP],
    ["predict", "--config", LP],
    ["compare"],
    ["extract"],
    ["rank", "--backbones", "vit-micro"],
    ["rank", "benchmark", "--backbones", "vit-micro"],
    ["rank", "train", "ranker"],
    ["rank", "evaluate"],
    ["evaluate", "--run", "runs/x"],
    ["analyze", "features", "--run", "runs/x"],
    ["export", "--run", "runs/x"],
    ["serve", "--artifact", "artifact"],
    ["data", "check", "dataset"],
    ["data", "make-shapes", "out"],
    ["data", "convert", "a.jsonl", "b.json"],
    ["backbones"],
]
IDS = [" ".join(c[:2]) if len(c) > 1 and not c[1].startswith("-") else c[0] for c in EVERY_COMMAND]


def _command_words(argv: list[str]) -> list[str]:
    return argv[:2] if len(argv) > 1 and argv[0] in ("rank", "data") and argv[1] in (
        "benchmark", "train", "evaluate", "check", "make-shapes", "convert") else argv[:1]  # fmt: skip


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=IDS)
def test_print_config_re_runs_with_config(argv, tmp_path, capsys):
    """What --print_config prints is a config: given back with --config it resolves to the same job."""
    assert main([*argv, "--print_config"]) == 0
    printed = capsys.readouterr().out
    config = tmp_path / "job.yaml"
    config.write_text(printed)
    assert main([*_command_words(argv), "--config", str(config), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)


def _options(argv: list[str]) -> list[str]:
    """Long options of a command's parser, without the generic ones."""
    from transferkit.cli import COMMANDS, build_command_parser, resolve_target

    words = _command_words(argv)
    target = COMMANDS[words[0]][0]
    target = target[words[1] if len(words) > 1 else ""] if isinstance(target, dict) else target
    parser = build_command_parser(resolve_target(target), "transferkit")
    generic = {"--help", "--config", "--print_config"}
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o not in generic]


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=IDS)
def test_a_typo_is_one_line_naming_it_and_the_closest_keys(argv, capsys):
    """No abbreviation is accepted: a prefix or a typo of a key is an error naming the nearest valid keys."""
    if argv[0] in LIGHTNING_COMMANDS:
        wrong, right = "--trainer.max_epoch", "--trainer.max_epochs"
    else:
        right = next(o for o in _options(argv) if len(o) > 8 and "." not in o)
        wrong = right[:-1]  # a prefix: argparse would have expanded it
    assert main([*argv, wrong, "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"unknown option '{wrong}'" in err and right in err.split("closest valid keys:")[1], err


def test_predict_on_a_folder_names_every_image_and_says_what_it_skipped(tmp_path, caplog):
    """``--data.predict_path``: one row per readable image (file path, top-k), the unreadable one skipped and
    counted, not silently misaligned."""
    from PIL import Image

    runs, folder = tmp_path / "runs", tmp_path / "new-images"
    assert (
        main(["fit", "--config", LP, *QUIET, *MICRO, "--trainer.max_epochs", "1", "--runs_dir", str(runs)])
        == 0
    )
    files = []
    for i in range(5):
        files.append(folder / "sub" / f"img {i}.png")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 24), (40 * i, 10, 200)).save(files[-1])
    (folder / "sub" / "img 2.png").write_bytes(b"not a png")  # unreadable
    run = runs / "linear_probe"
    args = [
        "--config",
        str(run / "config.yaml"),
        "--ckpt_path",
        "best",
        *QUIET,
        "--data.predict_path",
        str(folder),
    ]
    assert main(["predict", *args, "--data.eval_batch_size", "2", "--data.on_corrupt", "skip"]) == 0
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert [r["path"] for r in rows] == [str(f) for i, f in enumerate(files) if i != 2]
    assert "label" not in rows[0] and all(r["prediction"] in [str(d) for d in range(10)] for r in rows)
    assert "1 of 5 images have no prediction" in caplog.text


def test_saved_configs_re_run_after_test_and_predict(tmp_path):
    """fit writes config.yaml (named after its run); test/predict write theirs beside it, never over it."""
    runs = tmp_path / "runs"
    args = [*QUIET, *MICRO, "--trainer.max_epochs", "1", "--runs_dir", str(runs), "--name", "ft"]
    assert main(["fit", "--config", FT, *args]) == 0
    run = runs / "ft"
    fit_config = (run / "config.yaml").read_text()
    assert yaml.safe_load(fit_config)["name"] == "ft"
    best = str(run / "checkpoints" / "best.ckpt")
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", best, *QUIET]) == 0
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", best, *QUIET]) == 0
    assert (run / "config.yaml").read_text() == fit_config
    assert yaml.safe_load((run / "config.test.yaml").read_text())["ckpt_path"] == best
    assert (run / "config.predict.yaml").is_file()
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 360 and rows[0]["path"] == "predict[0]"  # the digits test split, in order
    assert {"label", "prediction", "probability", "top5", "p5"} <= set(rows[0])
    for r in rows[:20]:
        ps = [float(r[f"p{i}"]) for i in range(1, 6)]
        assert (
            r["prediction"] == r["top1"]
            and float(r["probability"]) == ps[0]
            and ps == sorted(ps, reverse=True)
        )
    assert main(["test", "--config", str(run / "config.test.yaml"), *QUIET]) == 0  # re-runs as saved
    assert main(["fit", "--config", str(run / "config.yaml"), *QUIET]) == 0  # a new run of the same job
    assert (runs / "ft-2" / "checkpoints" / "best.ckpt").is_file()


#: (argv, exit status) of every non-Lightning command's help and of argument mistakes (one row each)
STARTUP_ROWS = [
    *[
        ([*name.split(), "--help"], 0)
        for name in (
            "compare",
            "extract",
            "rank",
            "rank benchmark",
            "rank zoo",
            "rank train",
            "rank evaluate",
            "evaluate",
            "analyze",
            "export",
            "serve",
            "data check",
            "data make-shapes",
            "data convert",
            "backbones",
        )
    ],  # fmt: skip
    (["compare", "--bogus", "1"], 2),
    (["compare", "--data.source", "bogus"], 2),
    (["compare", "--data.image_size", "0"], 2),
    (["compare", "--data.frobnicate", "3"], 2),
    (["extract", "--precision", "float8"], 2),
    (["compare", "--probe.precision", "float16"], 2),
    (["rank", "--data", "digits", "--backbones", "[a, a]"], 2),
]


def test_help_and_argument_errors_come_back_before_torch_loads():
    """``--help`` and argument errors import neither torch nor lightning (so they come back in well under a
    second); checked in a fresh interpreter, every row in one."""
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from transferkit.cli import main
        out = []
        for argv, want in {STARTUP_ROWS!r}:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    status = main(argv)
                except SystemExit as e:
                    status = e.code
            assert status == want, (argv, status, buf.getvalue()[-500:])
            assert "torch" not in sys.modules and "lightning" not in sys.modules, (argv, buf.getvalue()[-300:])
            out.append(buf.getvalue())
        print("ok", len(out))
        """
    )
    env = {**os.environ, "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"ok {len(STARTUP_ROWS)}"


@pytest.mark.parametrize(
    ("world", "argv", "message"),
    [
        (
            "2",
            ["compare", "--finetune", "{}", "--devices", "2"],
            "compare --finetune trains in one process, but a launcher",
        ),
        ("2", ["rank", "zoo"], "rank zoo trains in one process"),
        ("2", ["rank", "train", "ranker"], "rank train trains in one process"),
        (
            "2",
            ["extract", "--strategy", "ddp_spawn", "--devices", "2"],
            "--strategy ddp_spawn starts its own",
        ),
        (
            "4",
            ["extract", "--devices", "2"],
            "a launcher started 4 processes but --devices 2 x --num_nodes 1 is 2",
        ),
        (None, ["extract", "--num_nodes", "2"], "--num_nodes 2 needs the command started on every node"),
        (
            None,
            ["compare", "--strategy", "ddp", "--devices", "2"],
            "--strategy ddp runs in processes a launcher",
        ),
        (
            None,
            ["rank", "--backbones", "vit-micro", "--strategy", "deepspeed"],
            "unknown --strategy 'deepspeed'; extraction is data-parallel",
        ),
    ],
)
def test_distributed_mistakes_are_one_line_errors_before_any_work(
    monkeypatch, tmp_path, capsys, world, argv, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()  # nothing was started
