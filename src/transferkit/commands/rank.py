"""``transferkit rank``: rank backbones for a dataset without fine-tuning them, and the learned ranker.

transferkit rank --data digits --backbones minilm-l6,minilm-l6:random,vit-micro   # training-free scores
transferkit rank benchmark --data digits --data.image_size 32 --backbones ... --tasks 8
transferkit rank train ranker --name rank-ranker
transferkit rank evaluate
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from transferkit.compare.options import parse_backbones
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.options import ExtractOptions, LogRegConfig
from transferkit.select.options import LearnedRankerOptions
from transferkit.select.zoo import ZooRecipe
from transferkit.utils.ranks import refuse_training_under_launcher


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "data"


def rank(
    data: DataSpec = DataSpec(),
    *,
    backbones: list[str] | str,
    split: str = "train",
    scores: list[str] | str = "all",
    max_samples: int | None = None,
    learned_ranker: str | None = None,
    target: str | None = None,
    name: str | None = None,
    runs_dir: str = "runs",
    results_table: str | None = None,
    extraction: ExtractOptions = ExtractOptions(),
    patch_size: int | None = None,
    seed: int = 0,
    cost: bool = True,
    max_latency_ms: float | None = None,
    max_memory_mb: float | None = None,
    min_images_per_s: float | None = None,
    cost_rounds: int = 21,
) -> int:
    """Rank backbones for a dataset without fine-tuning them: every training-free score (LogME, LEEP, NCE,
    H-score, shrinkage H-score, kNN, SFDA) of each backbone's frozen features, the ensemble rank and, when the
    results table measured this dataset, each score's agreement with the real accuracies; what each backbone
    costs on this machine (throughput, latency, peak memory, FLOPs; timings in rounds interleaved across the
    backbones, with their interquartile range), the Pareto set and the best backbone within the budgets; timings
    whose interquartile ranges overlap are not told apart.
    Writes runs/<name>/{config.yaml, results.json, metrics.json, report.md, cost.png (with --cost)} and appends
    the scores to the results table.

    Args:
        data: the dataset (--data X, or --data.<option>).
        backbones: backbone names, comma-separated or a list.
        split: the split whose features are scored.
        scores: score names (comma-separated or a list) or all.
        max_samples: score a class-stratified subset of this many images.
        learned_ranker: a trained learned-ranker folder (rank train ranker) to add as a 'learned' score.
        target: protocol/metric of the measured accuracies to compare with (default: the most common, e.g.
            linear_probe/top1).
        name: run name (default rank-<dataset>-<image size>).
        runs_dir: folder holding run directories and the results table.
        results_table: the results table (default <runs_dir>/performance.json).
        extraction: feature extraction and cache (--cache_dir, --batch_size, --device, ...).
        patch_size: patch size of the language-model backbones among the backbones (default 16).
        seed: seed of random-init backbones, the subset and the GMM pseudo-sources.
        cost: measure each backbone's cost on the chosen --device and --precision.
        max_latency_ms: recommend only backbones whose batch-1 latency is at most this (the lower quartile
            over the rounds, or a latency overlapping that of a backbone within it).
        max_memory_mb: recommend only backbones whose peak memory at the batch size is at most this.
        min_images_per_s: recommend only backbones at least this fast at the batch size (the upper quartile
            over the rounds, or a throughput overlapping that of a backbone within it).
        cost_rounds: timed rounds of the cost measurement, each timing every backbone once (batch 1 and the
            batch size) in an order shuffled per round with --seed.
    """
    names = parse_backbones(backbones)  # a bad list fails before anything heavy loads
    extraction.check_distributed()

    from rich.markup import escape

    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.select.cost import Budget, plot_cost
    from transferkit.select.rank import rank_backbones, rank_report, rank_tables, score_rows
    from transferkit.utils.console import make_console
    from transferkit.utils.io import atomic_write_json

    console = make_console()
    budget = Budget(max_latency_ms, max_memory_mb, min_images_per_s)
    if budget.active and not cost:
        raise UserError("a budget (--max_latency_ms, --max_memory_mb, --min_images_per_s) needs --cost true")
    if cost_rounds < 1:
        raise UserError(f"--cost_rounds must be >= 1, got {cost_rounds}")
    table = ResultsTable.of_runs_dir(runs_dir, results_table)
    rows = table.read()
    run = RunDir.create(runs_dir, name or f"rank-{_slug(data.name())}-{data.image_size}", "rank")
    run.write_config()
    console.print(
        f"[bold]rank[/bold] {escape(data.name())} at {data.image_size}px ({split}): {len(names)} backbones"
    )
    result = rank_backbones(
        data,
        names,
        split=split,
        scores=scores,
        max_samples=max_samples,
        extract=extraction,
        seed=seed,
        patch_size=patch_size,
        ranker=learned_ranker,
        results=rows,
        target=target,
        cost=cost,
        budget=budget,
        cost_rounds=cost_rounds,
    )
    for t in rank_tables(result):
        console.print(t.to_rich())
    rec = result.recommendation
    if rec is not None:
        by = "learned ranker" if rec.by == "learned" else "ensemble mean rank"
        within = f" within the budget ({len(result.over_budget)} over it)" if rec.budget.active else ""
        console.print(
            f"recommended by the {by}{within}: "
            f"[bold]{escape(rec.recommended or 'none (every backbone is over budget)')}[/bold]; "
            f"Pareto set (prediction vs latency, overlapping latency IQRs counting as equal): "
            f"{escape(', '.join(result.pareto))}"
        )
        plot = plot_cost(result.predicted, result.costs(), result.pareto, run.path / "cost.png",
                         "learned score" if rec.by == "learned" else "- mean rank (higher is better)")  # fmt: skip
    if result.accuracy is None:
        console.print(
            f"no measured accuracies of this dataset in {table.path} (run 'transferkit compare' on it first)"
        )
    elif not result.accuracy.exact_match:
        console.print(f"note: accuracies of '{data.name()}' were measured at another image size")
    results_json = result.to_dict()
    atomic_write_json(run.path / "results.json", results_json)
    run.update_metrics({"command": "rank", **results_json})
    report = rank_report(result)
    if rec is not None:
        report.section("cost", "Cost on this machine").add_image(plot, "predicted transferability vs latency")
    md, _ = report.write(run.path)
    table.append(score_rows(result, run.name))
    console.print(
        f"wrote {run.path / 'results.json'}, {run.path / 'metrics.json'}, {md}; scores appended to {table.path}"
    )
    return 0


def benchmark(
    data: DataSpec = DataSpec(),
    *,
    backbones: list[str] | str,
    tasks: int = 8,
    classes_per_task: int = 4,
    logreg: LogRegConfig = LogRegConfig(),
    name: str = "rank-benchmark",
    runs_dir: str = "runs",
    results_table: str | None = None,
    extraction: ExtractOptions = ExtractOptions(),
    patch_size: int | None = None,
    seed: int = 0,
) -> int:
    """Build real measurements for the learned ranker from class-subset tasks of one dataset: for every backbone
    and task, the test top-1 of the logistic-regression probe (C chosen on val) and every training-free score,
    appended to the results table (protocols logistic_regression and score).

    Args:
        data: the dataset whose classes are subset (--data X, or --data.<option>).
        backbones: backbone names, comma-separated or a list.
        tasks: number of class-subset tasks.
        classes_per_task: classes in each task.
        logreg: the logistic-regression protocol (C sweep).
        name: run name.
        runs_dir: folder holding run directories and the results table.
        results_table: the results table (default <runs_dir>/performance.json).
        extraction: feature extraction and cache (--cache_dir, --batch_size, --device, ...).
        patch_size: patch size of the language-model backbones among the backbones (default 16).
        seed: seed of the class subsets, random-init backbones and GMM pseudo-sources.
    """
    names = parse_backbones(backbones)  # a bad list fails before anything heavy loads
    extraction.check_distributed()

    from transferkit.report import Report
    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.select.benchmark import benchmark_table, run_benchmark
    from transferkit.utils.console import make_console

    console = make_console()
    table = ResultsTable.of_runs_dir(runs_dir, results_table)
    run = RunDir.create(runs_dir, name, "rank benchmark")
    run.write_config()
    rows, accs = run_benchmark(
        data,
        names,
        tasks=tasks,
        classes_per_task=classes_per_task,
        logreg=logreg,
        extract=extraction,
        seed=seed,
        patch_size=patch_size,
        run=run.name,
        on_backbone=lambda n: console.print(f"{n}: {tasks} tasks probed and scored"),
    )
    table.append(rows)
    t = benchmark_table(accs, names)
    console.print(t.to_rich())
    run.update_metrics(
        {"command": "rank benchmark", "dataset": data.name(), "test_top1": accs, "rows": len(rows)}
    )
    report = Report(f"Ranking benchmark: class-subset tasks of {data.name()}")
    report.section("benchmark", "Logistic-regression probe per task").add_table(t)
    md, _ = report.write(run.path)
    console.print(f"wrote {run.path / 'metrics.json'}, {md}; {len(rows)} rows appended to {table.path}")
    return 0


def zoo(
    recipe: ZooRecipe = ZooRecipe(),
    *,
    zoo_dir: str | None = None,
    rebuild: bool = False,
    logreg: LogRegConfig = LogRegConfig(),
    name: str = "rank-zoo",
    runs_dir: str = "runs",
    results_table: str | None = None,
    extraction: ExtractOptions = ExtractOptions(),
    seed: int = 0,
) -> int:
    """Pretrain an offline model zoo (supervised and DINO members on offline sources, see
    configs/rank/zoo.yaml) and measure it with the included backbones on class-subset tasks of several offline
    datasets: the logistic-regression probe and every training-free score of each (backbone, task), appended
    to the results table (protocols logistic_regression and score) for rank train / rank evaluate.

    Args:
        recipe: the zoo (--recipe.members, --recipe.include, --recipe.targets, ...; usually --config).
        zoo_dir: where members are saved and reused (default <runs_dir>/zoo: members/<name>, train/<name>).
        rebuild: pretrain every member again even when a saved one matches its recipe.
        logreg: the logistic-regression protocol (C sweep).
        name: run name.
        runs_dir: folder holding run directories and the results table.
        results_table: the results table (default <runs_dir>/performance.json).
        extraction: feature extraction and cache (--cache_dir, --batch_size, --device, ...).
        seed: seed of the pretraining, the class subsets and the GMM pseudo-sources.
    """
    refuse_training_under_launcher("rank zoo")  # before any work
    extraction.check_distributed()
    from pathlib import Path

    from transferkit.report import Report
    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.select.benchmark import benchmark_table
    from transferkit.select.zoo import run_zoo
    from transferkit.utils.console import make_console

    console = make_console()
    table = ResultsTable.of_runs_dir(runs_dir, results_table)
    run = RunDir.create(runs_dir, name, "rank zoo")
    run.write_config()
    home = Path(zoo_dir) if zoo_dir else Path(runs_dir) / "zoo"
    rows, facts = run_zoo(
        recipe, home, logreg=logreg, extract=extraction, seed=seed, rebuild=rebuild, progress=console.print
    )
    for m, f in facts["members"].items():
        acc = f" (val top-1 on its source {f['source_val_acc1']:.3f})" if "source_val_acc1" in f else ""
        console.print(f"member {m}: {'reused' if f.get('reused') else 'pretrained'}, {f['path']}{acc}")
    table.append(rows)
    report = Report("Offline model zoo: class-subset tasks of several datasets")
    for target, accs in facts["targets"].items():
        t = benchmark_table(accs, facts["backbones"])
        t.title = f"{target}: logistic-regression probe, test top-1 per class-subset task"
        console.print(t.to_rich())
        report.section(f"target-{target}", target).add_table(t)
    run.update_metrics({"command": "rank zoo", "recipe": asdict(recipe), **facts, "rows": len(rows)})
    md, _ = report.write(run.path)
    console.print(f"wrote {run.path / 'metrics.json'}, {md}; {len(rows)} rows appended to {table.path}")
    return 0


def train(
    trainer: str,
    *,
    backbones: list[str] | str | None = None,
    autoencoder: str | None = None,
    ranker: LearnedRankerOptions = LearnedRankerOptions(),
    target: str | None = None,
    name: str | None = None,
    runs_dir: str = "runs",
    results_table: str | None = None,
    cache_dir: str | None = None,
) -> int:
    """Train a part of the learned ranker: 'autoencoder' (model embeddings from the weights of the results
    table's backbones, or --backbones) or 'ranker' (autoencoder + ranking transformer on the results table).
    Writes runs/<name>/ (history.json, loss_curves.png, model.pt per part; ranker.json for the ranker).

    Args:
        trainer: autoencoder or ranker (case-insensitive; a 'Trainer' suffix is optional).
        backbones: autoencoder: backbones to embed (default: the results table's).
        autoencoder: ranker: reuse this trained autoencoder folder instead of training one.
        ranker: the learned ranker (--ranker.embedding.*, --ranker.autoencoder.*, --ranker.model.*,
            --ranker.train.*, ...).
        target: protocol/metric of the results table to learn (default: the most common).
        name: run name (default rank-train-<trainer>).
        runs_dir: folder holding run directories and the results table.
        results_table: the results table (default <runs_dir>/performance.json).
        cache_dir: feature cache of the dataset encoder.
    """
    refuse_training_under_launcher("rank train")  # before any work
    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.select.learned import load_target_rows, train_autoencoder, train_ranker
    from transferkit.select.pipeline import model_image_sizes
    from transferkit.select.trainers import get_trainer
    from transferkit.utils.console import make_console

    console = make_console()
    kind = get_trainer(trainer).name
    table = ResultsTable.of_runs_dir(runs_dir, results_table)
    rows: list[Any] = []
    all_rows: list[Any] = []
    if kind == "ranker" or backbones is None:
        rows, all_rows = load_target_rows(table, target)
    run = RunDir.create(runs_dir, name or f"rank-train-{kind}", f"rank train {kind}")
    run.write_config()
    with console.status(f"training the {kind}") as status:
        if kind == "autoencoder":
            sizes = (
                model_image_sizes(rows) if backbones is None else {n: 224 for n in parse_backbones(backbones)}
            )
            results = {"autoencoder": train_autoencoder(sizes, ranker, run.path, cache_dir, status.update)}
        else:
            bundle, results = train_ranker(
                rows, ranker, run.path, cache_dir, autoencoder, status.update, all_rows=all_rows
            )
            console.print(
                f"results table {table.path} ({rows[0].target}): {len(bundle.meta['datasets'])} datasets, "
                f"{len(bundle.meta['models'])} models; dataset encoder {bundle.settings.encoder}"
            )
    for part, res in results.items():
        h = res.history
        console.print(
            f"[bold]{part}[/bold]: {h.get('epochs_run', 0)} epochs, best epoch {h.get('best_epoch')}"
        )
        for kind_, path in res.files.items():
            console.print(f"  {kind_}: {path}")
    run.update_metrics(
        {
            "command": f"rank train {kind}",
            **{
                p: {k: r.history.get(k) for k in ("epochs_run", "best_epoch", "best_val_loss", "seconds")}
                for p, r in results.items()
            },
        }
    )
    if kind == "ranker":
        console.print(
            f"learned ranker written to {run.path} (use it with 'transferkit rank ... --learned_ranker {run.path}')"
        )
    return 0


def evaluate(
    *,
    table: str | None = None,
    ranker: LearnedRankerOptions = LearnedRankerOptions(),
    target: str | None = None,
    name: str = "rank-evaluate",
    runs_dir: str = "runs",
    results_table: str | None = None,
    cache_dir: str | None = None,
) -> int:
    """Leave-one-dataset-out evaluation of the learned ranker against every training-free score of the results
    table: mean Kendall tau, weighted tau, top-1 hit and top-1 regret per method. With --table, every predictor
    a table allows without images or weights (data-free priors, its score columns, the ranker on per-model
    embeddings and per-pair features) on a shipped public table (sfda-group1, sfda-group2: published fine-tune
    accuracies) or a results-table file, beside the published reference rows.
    Writes runs/<name>/{config.yaml, metrics.json, report.md} (and weighted_tau.png with --table).

    Args:
        table: sfda-group1, sfda-group2 or a results-table path (no images or weights needed); None: the
            results table with the full learned ranker.
        ranker: the learned ranker (--ranker.*, as in rank train).
        target: protocol/metric of the results table to rank by (default: the most common).
        name: run name.
        runs_dir: folder holding run directories and the results table.
        results_table: the results table (default <runs_dir>/performance.json).
        cache_dir: feature cache of the dataset encoder.
    """
    refuse_training_under_launcher("rank evaluate")  # before any work
    from transferkit.report import Report
    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.select.learned import evaluate_ranker, load_target_rows, lodo_table
    from transferkit.utils.console import make_console

    console = make_console()
    if table is not None:
        return _evaluate_table(table, ranker, target, name, runs_dir, console)
    results = ResultsTable.of_runs_dir(runs_dir, results_table)
    rows, all_rows = load_target_rows(results, target)
    run = RunDir.create(runs_dir, name, "rank evaluate")
    run.write_config()
    with console.status("embedding models and datasets, leave-one-dataset-out") as status:
        result = evaluate_ranker(rows, all_rows, ranker, cache_dir, run.path / "embeddings", status.update)
    t = lodo_table(
        result,
        f"leave-one-dataset-out over {len(result['datasets'])} datasets ({result['target']}, {results.path})",
    )
    console.print(t.to_rich())
    run.update_metrics({"command": "rank evaluate", "results_table": str(results.path), **result})
    report = Report("Learned ranker: leave-one-dataset-out")
    report.section("lodo", "Leave-one-dataset-out").add_table(t)
    md, _ = report.write(run.path)
    console.print(f"wrote {run.path / 'metrics.json'}, {md}")
    return 0


def _evaluate_table(
    table: str, ranker: Any, target: str | None, name: str, runs_dir: str, console: Any
) -> int:
    """``rank evaluate --table``: the data-free priors, the table's scores and the learned ranker
    (leave-one-dataset-out), beside the table's published rows."""
    from transferkit.report import Report
    from transferkit.runs import RunDir
    from transferkit.select.public import (
        evaluate_table,
        load_table,
        plot_table_evaluation,
        table_report_tables,
    )

    rows, meta = load_table(table)
    with console.status("leave-one-dataset-out") as status:
        result = evaluate_table(
            rows, meta, target, ranker, lambda k: status.update(f"leave-one-dataset-out: holding out {k}")
        )
    result["name"] = meta.get("name", table)
    run = RunDir.create(runs_dir, name, "rank evaluate")
    run.write_config()
    title = f"{result['name']}: {len(result['datasets'])} datasets, {len(result['models'])} models ({result['target']})"
    tables = table_report_tables(result, title)
    for t in tables:
        console.print(t.to_rich())
    if meta.get("citation"):
        src = meta.get("source")
        if isinstance(src, dict):
            src = " ".join(str(src[k])[:12] if k == "commit" else str(src[k]) for k in src)
        console.print(f"source: {src}. {meta['citation']}", highlight=False, soft_wrap=True)
    plot = plot_table_evaluation(result, run.path / "weighted_tau.png")
    run.update_metrics({"command": "rank evaluate", "table": table, **result})
    report = Report(
        f"Ranking models without fine-tuning them: {result['name']}", meta=meta.get("citation", "")
    )
    section = report.section("table", "Predictors against the table's accuracies")
    for t in tables:
        section.add_table(t)
    section.add_image(plot, "mean weighted tau per predictor (grey: published)")
    md, _ = report.write(run.path)
    console.print(f"wrote {run.path / 'metrics.json'}, {md}, {plot}")
    return 0
