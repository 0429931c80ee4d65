"""``transferkit compare``: a fair comparison of backbones on one dataset, with a report.

transferkit compare                                   # MiniLM and EfficientNet-Lite0 vs their random twins, on shapes
transferkit compare --data path/to/imagefolder --backbones facebook/dinov2-small,openai-community/gpt2
transferkit compare --config configs/compare/default.yaml --finetune.epochs 3
transferkit compare --config configs/compare/default.yaml --print_config
"""

from __future__ import annotations

from transferkit.compare.options import FinetuneOptions, KnnOptions, ProbeOptions, parse_backbones
from transferkit.data.spec import DataSpec
from transferkit.probe.options import ExtractOptions
from transferkit.utils.ranks import refuse_training_under_launcher


def compare(
    data: DataSpec = DataSpec({"source": "shapes"}),
    *,
    backbones: list[str] | str = [
        "minilm-l6",
        "minilm-l6:random",
        "efficientnet-lite0",
        "efficientnet-lite0:random",
    ],
    probe: ProbeOptions = ProbeOptions(),
    knn: KnnOptions = KnnOptions(),
    finetune: FinetuneOptions | None = None,
    fair_pairs: bool = True,
    fair_max_ratio: float = 4.0,
    seeds: int = 1,
    name: str = "compare",
    runs_dir: str = "runs",
    results_table: str | None = None,
    record_results: bool = True,
    extraction: ExtractOptions = ExtractOptions(),
    patch_size: int | None = None,
    seed: int = 0,
) -> int:
    """Fair comparison of backbones on one dataset: cached features, a one-pass linear-probe grid, kNN, an
    optional fine-tune; writes runs/<name>/{config.yaml, metrics.json, results.json, report.md/html, plots/}.

    Args:
        data: the dataset (--data X, or --data.<option>).
        backbones: registered names, timm names, hub ids or local dirs, comma-separated or a list (':random' = the
            random-init twin).
        probe: the linear-probe grid.
        knn: the kNN protocol.
        finetune: also fine-tune every backbone (transferkit fit); --finetune '{}' for the defaults.
        fair_pairs: match each backbone with the closest-size backbone of every other modality.
        fair_max_ratio: a pair is fair when the larger backbone has at most this many times the parameters of
            the smaller; beyond it the table says there is no fair partner.
        seeds: repeat the probe and kNN with seeds seed, seed+1, ... and report mean and spread (random-init
            weights, heads and batch order change; the tests and tables use the first seed).
        name: run name (the folder under runs_dir; name-2, ... when taken).
        runs_dir: folder holding run directories and the results table.
        results_table: results table to append to (default <runs_dir>/performance.json).
        record_results: append this run's numbers to the results table.
        extraction: feature extraction and cache (--cache_dir, --batch_size, --device, ...).
        patch_size: patch size of the language-model backbones among the backbones (default 16).
        seed: seed of random-init weights, heads and batch order.
    """
    names = parse_backbones(backbones)  # a bad list fails before anything heavy loads
    extraction.check_distributed()
    if finetune is not None:
        refuse_training_under_launcher("compare --finetune")

    from rich.text import Text

    from transferkit.compare import run_compare
    from transferkit.compare.report import gains_table, headline, pairs_table, pairwise_table, seeds_table
    from transferkit.compare.report import results_table as main_table
    from transferkit.compare.results import BackboneResult
    from transferkit.results import ResultsTable
    from transferkit.runs import RunDir
    from transferkit.utils.console import make_console

    table = ResultsTable.of_runs_dir(runs_dir, results_table) if record_results else None
    console = make_console(soft_wrap=True)  # long paths stay on one line
    run = RunDir.create(runs_dir, name, "compare")
    run.write_config()
    console.print(f"[bold]transferkit compare[/bold]: {len(names)} backbones on {data.name()} -> {run.path}")

    def show(entry: BackboneResult) -> None:
        hit = all(f["cache_hit"] for f in entry.features.values())
        accs = ", ".join(f"{r.label} {100 * r.test_acc1:.2f}%" for r in entry.protocols.values())
        speed = f", {entry.throughput_img_s:,.0f} img/s" if entry.throughput_img_s else ""
        if entry.linear.extensions:
            accs += f" (LR grid extended {entry.linear.extensions}x)"
        console.print(Text(f"  {entry.name}: {accs} (features {'cached' if hit else 'extracted'}{speed})"))

    results = run_compare(
        data,
        names,
        run=run,
        probe=probe,
        knn=knn,
        finetune=finetune,
        extract=extraction,
        seed=seed,
        seeds=seeds,
        patch_size=patch_size,
        with_fair_pairs=fair_pairs,
        fair_max_ratio=fair_max_ratio,
        results_table=table,
        on_backbone=show,
    )
    console.print(main_table(results).to_rich())
    if results.pretraining_gains:
        console.print(gains_table(results).to_rich())
    if results.pairwise:
        console.print(pairwise_table(results).to_rich())
    if seeds > 1:
        console.print(seeds_table(results).to_rich())
    if results.fair_pairs:
        console.print(pairs_table(results).to_rich())
    console.print("[bold]Summary[/bold]")
    for line in headline(results):
        console.print(Text(line.replace("**", "")))
    if results.doubts:
        console.print(
            f"[bold yellow]Doubts[/bold yellow] ({len(results.doubts)}; the rules are in the report):"
        )
        for d in results.doubts:
            console.print(Text(f"- {d.kind}: {d.message}"))
    else:
        console.print("Doubts: none by the report's rules.")
    console.print(
        f"wrote {run.path / 'report.md'}, {run.path / 'report.html'}, {run.path / 'metrics.json'}, "
        f"{run.path / 'results.json'} ({results.wall_time_s:.0f}s)"
        + (f"; appended to {table.path}" if table is not None else "")
    )
    return 0
