"""``transferkit compare``: a fair comparison of backbones on one dataset, with a report.

    transferkit compare                                   # MiniLM vs its random twin vs a random ViT, on digits
    transferkit compare --data path/to/imagefolder --backbones facebook/dinov2-small,openai-community/gpt2
    transferkit compare --config configs/compare/default.yaml --finetune
    transferkit compare --config configs/compare/default.yaml --print_config

Writes ``<runs_dir>/<name>/``: ``config.yaml``, ``results.json``, ``report.md``, ``report.html``, ``plots/``
(and ``finetune/<backbone>/log`` with ``--finetune``), and appends rows to ``<runs_dir>/performance.json``.
``--data X`` is short for ``--data.source X`` (digits, cifar10, ...), or for an ImageFolder / CSV dataset
when X is a folder / ``.csv`` file; every datamodule option stays available as ``--data.<option>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from transferkit.errors import UserError
from transferkit.utils.console import make_console

DATA_SOURCES = ("digits", "imagefolder", "csv", "cifar10", "cifar100")


def expand_data_shorthand(argv: list[str]) -> list[str]:
    """``--data digits`` -> ``--data.source digits``; ``--data DIR`` -> ImageFolder; ``--data X.csv`` -> CSV."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg == "--data" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--data="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if value in DATA_SOURCES:
            out += ["--data.source", value]
        elif value.lower().endswith(".csv"):
            out += ["--data.source", "csv", "--data.path", value]
        elif Path(value).expanduser().is_dir():
            out += ["--data.source", "imagefolder", "--data.path", value]
        elif value.lstrip().startswith("{") or value.lower().endswith((".yaml", ".yml", ".json")):
            out += ["--data", value]  # a mapping or a config file for the whole data section
        else:
            raise UserError(
                f"--data '{value}' is neither a data source ({', '.join(DATA_SOURCES)}), an existing image folder "
                "nor a .csv file; check the path, or use --data.source/--data.path"
            )
    return out


def add_data_arguments(parser: ArgumentParser) -> None:
    from transferkit.data import ImageClassificationDataModule

    parser.add_class_arguments(ImageClassificationDataModule, "data", fail_untyped=False)


def build_datamodule(cfg_data: Namespace) -> Any:
    from transferkit.data import ImageClassificationDataModule

    return ImageClassificationDataModule(**cfg_data.as_dict())


def build_parser() -> ArgumentParser:
    from transferkit.compare import DEFAULT_BACKBONES, FinetuneOptions, KnnOptions, ProbeOptions

    parser = ArgumentParser(
        prog="transferkit compare",
        description="Fair comparison of backbones on one dataset: cached features, a one-pass linear-probe grid, "
        "kNN, optional fine-tune; writes results.json and report.md/html with plots.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (see configs/compare/)")
    add_data_arguments(parser)
    parser.add_argument(
        "--backbones",
        type=list[str] | str,
        default=list(DEFAULT_BACKBONES),
        help="comma-separated backbone names (registered names, timm names, hub ids, local dirs; ':random' "
        "for a random-init twin)",
    )
    parser.add_class_arguments(ProbeOptions, "probe")
    parser.add_class_arguments(KnnOptions, "knn")
    parser.add_argument(
        "--finetune", action=ActionYesNo, default=False, help="also fine-tune every backbone (Lightning)"
    )
    parser.add_class_arguments(FinetuneOptions, "finetune_options")
    parser.add_argument(
        "--fair_pairs",
        action=ActionYesNo,
        default=True,
        help="match each backbone with the closest-size backbone of every other modality",
    )
    parser.add_argument("--name", type=str, default="compare", help="run name (folder under runs_dir)")
    parser.add_argument("--runs_dir", type=str, default="runs", help="folder holding run directories")
    parser.add_argument(
        "--cache_dir",
        type=str | None,
        default=None,
        help="feature cache (default: $TRANSFERKIT_CACHE_DIR or ~/.cache/transferkit/features)",
    )
    parser.add_argument(
        "--performance_table",
        type=str | None,
        default=None,
        help="shared performance table to append to (default: <runs_dir>/performance.json)",
    )
    parser.add_argument(
        "--record_performance",
        action=ActionYesNo,
        default=True,
        help="append this run to the performance table",
    )
    parser.add_argument("--batch_size", type=int | None, default=None, help="feature-extraction batch size")
    parser.add_argument(
        "--device", type=str | None, default=None, help="cpu, cuda, cuda:1 (default: cuda if any)"
    )
    parser.add_argument(
        "--patch_size",
        type=int | None,
        default=None,
        help="patch size of language-model backbones (default 16)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of random-init weights, heads and batch order"
    )
    parser.add_argument(
        "--refresh_cache", type=bool, default=False, help="re-extract features even when cached"
    )
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    cfg = parser.parse_args(expand_data_shorthand(argv))

    import yaml

    from transferkit.cli import unique_run_dir
    from transferkit.compare import (
        FinetuneOptions,
        KnnOptions,
        ProbeOptions,
        parse_backbones,
        results_table,
        run_compare,
    )
    from transferkit.utils.io import atomic_write_text

    console = make_console(soft_wrap=True)  # long paths stay on one line
    backbones = parse_backbones(cfg.backbones)
    dm = build_datamodule(cfg.data)
    runs_dir = Path(cfg.runs_dir)
    run_dir = unique_run_dir(runs_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", parser.dump(cfg, skip_none=False))
    perf = Path(cfg.performance_table) if cfg.performance_table else runs_dir / "performance.json"

    console.print(
        f"[bold]transferkit compare[/bold]: {len(backbones)} backbones on {cfg.data.source} -> {run_dir}"
    )

    def show(entry: dict[str, Any]) -> None:
        hit = all(f["cache_hit"] for f in entry["features"].values())
        console.print(
            f"  {entry['name']}: linear {100 * entry['linear']['test_acc1']:.2f}%, kNN "
            f"{100 * entry['knn']['test_acc1']:.2f}%"
            + (f", fine-tune {100 * entry['finetune']['test_acc1']:.2f}%" if entry.get("finetune") else "")
            + f" (features {'cached' if hit else 'extracted'}, {entry['throughput_img_s']:,.0f} img/s)"
        )

    results = run_compare(
        dm,
        backbones,
        run_dir=run_dir,
        probe=ProbeOptions(**cfg.probe.as_dict()),
        knn=KnnOptions(**cfg.knn.as_dict()),
        finetune=FinetuneOptions(**cfg.finetune_options.as_dict()) if cfg.finetune else None,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        device=cfg.device,
        seed=cfg.seed,
        patch_size=cfg.patch_size,
        with_fair_pairs=cfg.fair_pairs,
        performance_table=perf if cfg.record_performance else None,
        refresh_cache=cfg.refresh_cache,
        progress=cfg.progress,
        config=yaml.safe_load(parser.dump(cfg, skip_none=False)),
        on_backbone=show,
    )
    console.print(results_table(results).to_rich())
    from transferkit.compare import gains_table, pairs_table

    if results["pretraining_gains"]:
        console.print(gains_table(results).to_rich())
    if results["fair_pairs"]:
        console.print(pairs_table(results).to_rich())
    console.print(
        f"wrote {run_dir / 'report.md'}, {run_dir / 'report.html'}, {run_dir / 'results.json'} "
        f"({results['wall_time_s']:.0f}s)" + (f"; appended to {perf}" if cfg.record_performance else "")
    )
    return 0
