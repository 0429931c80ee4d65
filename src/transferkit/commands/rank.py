"""``transferkit rank``: rank backbones for a dataset without fine-tuning them.

``transferkit rank --data digits --backbones minilm-l6,minilm-l6:random,vit-micro``
    Extracts (or re-uses from the feature cache) each backbone's features of the ``--split`` images, computes
    every training-free score (LogME, LEEP, NCE, H-score, shrinkage H-score, kNN, SFDA), prints a table per
    score (ranked, with its time) and the ensemble rank, and -- when the performance table holds real
    accuracies for this dataset (``transferkit compare`` runs) -- Kendall tau and weighted tau of every score
    against them. ``--ranker DIR`` adds a trained learned ranker's scores. Writes ``<runs_dir>/<name>/``
    (``rank.json``, ``report.md``) and appends the scores to ``<runs_dir>/transferability.json``.
``transferkit rank train --list`` / ``transferkit rank train NAME ...``
    Lists / runs a named trainer (:mod:`transferkit.select.trainers`): ``autoencoder`` (model embeddings from
    the weights of the table's backbones) or ``ranker`` (autoencoder + ranking transformer on the performance
    table). Writes history JSON, loss curves and checkpoints under ``<runs_dir>/<name>/``.
``transferkit rank evaluate --table T [--scores S]``
    Leave-one-dataset-out evaluation of the learned ranker vs the training-free scores.
``transferkit rank benchmark --data digits --backbones ... --tasks 8``
    Builds a real performance table from class-subset tasks of a dataset (linear-probe accuracy of every
    backbone on each task from cached features, plus every training-free score), for training and
    evaluating the learned ranker when there are not enough ``compare`` runs yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import ActionYesNo, ArgumentParser
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transferkit.errors import UserError
from transferkit.utils.console import make_console

log = logging.getLogger(__name__)

SUBCOMMANDS = ("train", "evaluate", "benchmark")


# ---------------------------------------------------------------------------------------------- parsers
def _common_data_args(p: ArgumentParser) -> None:
    p.add_argument(
        "--data", type=str, required=True, help="digits, an imagefolder dir, a CSV file, or cifar10:PATH."
    )
    p.add_argument("--backbones", type=str, required=True, help="Comma-separated backbone names.")
    p.add_argument("--image_size", type=int, default=64, help="Image size fed to the backbones.")
    p.add_argument(
        "--cache_dir", type=str | None, default=None, help="Feature cache root (default: ~/.cache)."
    )
    p.add_argument("--runs_dir", type=str, default="runs", help="Where run folders and tables live.")
    p.add_argument("--batch_size", type=int | None, default=None, help="Extraction batch size.")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="transferkit rank", description="Rank backbones for a dataset without fine-tuning."
    )
    _common_data_args(p)
    p.add_argument("--split", type=str, default="train", help="Split whose features are scored.")
    p.add_argument("--scores", type=str, default="all", help="Comma-separated scores, or 'all'.")
    p.add_argument("--max_samples", type=int | None, default=None, help="Score a class-stratified subset.")
    p.add_argument("--name", type=str | None, default=None, help="Run folder name (default rank-<data>).")
    p.add_argument(
        "--performance",
        type=str | None,
        default=None,
        help="Performance table (default <runs_dir>/performance.json).",
    )
    p.add_argument(
        "--metric", type=str | None, default=None, help="Performance-table metric to compare with."
    )
    p.add_argument("--ranker", type=str | None, default=None, help="A trained learned-ranker folder to add.")
    p.add_argument("--seed", type=int, default=0, help="Seed of random-init backbones, subsampling and GMMs.")
    return p


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="transferkit rank train", description="Run a named trainer of the learned ranker."
    )
    p.add_argument("trainer", type=str, nargs="?", help="Trainer name (see --list).")
    p.add_argument("--list", action=ActionYesNo, default=False, help="List the trainers and exit.")
    _table_arg(p)
    p.add_argument(
        "--metric",
        type=str | None,
        default=None,
        help="Metric of the table to learn (default: the most common).",
    )
    p.add_argument(
        "--backbones",
        type=str | None,
        default=None,
        help="autoencoder: backbones to embed (default: the table's).",
    )
    p.add_argument(
        "--autoencoder", type=str | None, default=None, help="ranker: reuse a trained autoencoder folder."
    )
    _model_args(p)
    return p


def _table_arg(p: ArgumentParser) -> None:
    p.add_argument(
        "--table",
        type=str | None,
        default=None,
        help="Performance table (default <runs_dir>/performance.json).",
    )


def _model_args(p: ArgumentParser) -> None:
    p.add_argument("--runs_dir", type=str, default="runs", help="Where run folders live.")
    p.add_argument("--name", type=str | None, default=None, help="Run folder name.")
    p.add_argument("--cache_dir", type=str | None, default=None, help="Feature cache root.")
    p.add_argument(
        "--encoder",
        type=str,
        default="auto",
        help="Dataset encoder (auto: CLIP/SigLIP if cached, else minilm-l6).",
    )
    p.add_argument(
        "--max_samples", type=int, default=128, help="Images per dataset token set (class-balanced)."
    )
    p.add_argument("--stats_dim", type=int, default=8192, help="Weight-statistics vector length.")
    p.add_argument("--stats_slots", type=int, default=64, help="Depth slots of the weight statistics.")
    p.add_argument("--code_dim", type=int, default=512, help="Autoencoder code (model embedding) length.")
    p.add_argument(
        "--ae_hidden", type=str, default="1024", help="Autoencoder hidden widths, comma-separated."
    )
    p.add_argument("--activation", type=str, default="gelu", help="gelu, relu or leakyrelu.")
    p.add_argument("--dropout", type=float, default=0.1, help="Dropout (autoencoder and ranker).")
    p.add_argument("--ae_loss", type=str, default="mse", help="Autoencoder loss: mse or smoothl1.")
    p.add_argument("--l1_code", type=float, default=0.0, help="L1 penalty on the autoencoder code.")
    p.add_argument("--ae_epochs", type=int, default=300, help="Autoencoder max epochs.")
    p.add_argument("--d_model", type=int, default=64, help="Ranker width.")
    p.add_argument("--layers", type=int, default=2, help="Ranker decoder layers.")
    p.add_argument("--heads", type=int, default=4, help="Ranker attention heads.")
    p.add_argument("--loss", type=str, default="listmle", help="Ranking loss: listmle or pairwise.")
    p.add_argument("--epochs", type=int, default=200, help="Ranker max epochs.")
    p.add_argument("--lr", type=float, default=1e-3, help="Learning rate (both trainers).")
    p.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay.")
    p.add_argument("--batch_size", type=int, default=16, help="Items per step.")
    p.add_argument("--scheduler", type=str, default="plateau", help="plateau, cosine or none.")
    p.add_argument("--warmup_epochs", type=int, default=0, help="Warm-up epochs (cosine).")
    p.add_argument("--grad_clip", type=float, default=1.0, help="Max gradient norm (0 = off).")
    p.add_argument("--patience", type=int, default=40, help="Early-stopping patience (0 = off).")
    p.add_argument("--val_fraction", type=float, default=0.2, help="Held-out fraction for early stopping.")
    p.add_argument("--seed", type=int, default=0, help="Seed.")
    p.add_argument("--progress", action=ActionYesNo, default=False, help="Show Lightning progress bars.")


def _eval_parser() -> ArgumentParser:
    p = ArgumentParser(prog="transferkit rank evaluate", description="Leave-one-dataset-out evaluation.")
    _table_arg(p)
    p.add_argument(
        "--scores",
        type=str | None,
        default=None,
        help="Score table (default: transferability.json next to the table).",
    )
    p.add_argument(
        "--metric", type=str | None, default=None, help="Metric of the table (default: the most common)."
    )
    _model_args(p)
    return p


def _bench_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="transferkit rank benchmark", description="Build a performance table from class-subset tasks."
    )
    _common_data_args(p)
    p.add_argument("--tasks", type=int, default=8, help="Number of class-subset tasks.")
    p.add_argument("--classes_per_task", type=int, default=4, help="Classes in each task.")
    p.add_argument("--eval_split", type=str, default="test", help="Split the probe accuracy is measured on.")
    p.add_argument(
        "--out", type=str | None, default=None, help="Output folder (default <runs_dir>/rank-benchmark)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the class subsets.")
    return p


def _parse(parser: ArgumentParser, argv: list[str]) -> Any:
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error jsonargparse already printed
        raise _Exit(int(e.code or 0) if not isinstance(e.code, str) else 2) from None


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


def main(argv: list[str]) -> int:
    """Run ``transferkit rank`` with ``argv`` (the words after ``rank``); returns the exit status."""
    try:
        if argv and argv[0] in SUBCOMMANDS:
            sub = argv[0]
            if sub == "train":
                return _train(_parse(_train_parser(), argv[1:]))
            if sub == "evaluate":
                return _evaluate(_parse(_eval_parser(), argv[1:]))
            return _benchmark(_parse(_bench_parser(), argv[1:]))
        return _rank(_parse(build_parser(), argv))
    except _Exit as e:
        return e.code


# ---------------------------------------------------------------------------------------------- helpers
def resolve_data(data: str, image_size: int) -> tuple[Any, dict[str, Any]]:
    """``(datamodule, dataset spec)`` of ``--data``: ``digits``, ``cifar10:PATH``/``cifar100:PATH``, an
    imagefolder directory or a CSV file."""
    from transferkit.select.pipeline import build_datamodule, data_spec

    if data == "digits":
        spec = data_spec("digits", None, image_size)
    elif data.split(":", 1)[0] in ("cifar10", "cifar100") and ":" in data:
        source, path = data.split(":", 1)
        spec = data_spec(source, str(Path(path).expanduser().resolve()), image_size)
    elif Path(data).expanduser().is_dir():
        spec = data_spec("imagefolder", str(Path(data).expanduser().resolve()), image_size)
    elif data.endswith(".csv") and Path(data).expanduser().is_file():
        spec = data_spec("csv", str(Path(data).expanduser().resolve()), image_size)
    else:
        raise UserError(
            f"--data '{data}' is neither 'digits', cifar10:PATH / cifar100:PATH, an imagefolder directory nor "
            "a CSV file"
        )
    return build_datamodule(spec), spec


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--backbones needs at least one name (comma-separated)")
    if len(set(names)) != len(names):
        raise UserError(f"--backbones lists a name twice: {names}")
    return names


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "nan"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3e}"


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "data"


def _matching_rows(rows: Sequence[Any], identity: dict[str, Any]) -> tuple[list[Any], bool]:
    """Performance rows about this dataset: same fingerprint (``exact`` = True), else -- measured at another
    image size -- rows with the same dataset name (full datasets only, not class-subset tasks)."""
    exact = [r for r in rows if r.dataset == identity["fingerprint"]]
    if exact:
        return exact, True
    return [r for r in rows if r.dataset_name == identity["name"] and not r.data.get("classes")], False


def _known_specs(score_path: Path) -> dict[str, dict[str, Any]]:
    from transferkit.select.table import read_score_rows

    return {
        str(r["dataset"]): dict(r["data"])
        for r in read_score_rows(score_path)
        if isinstance(r.get("data"), dict)
    }


# ---------------------------------------------------------------------------------------------- rank
def _rank(args: Any) -> int:
    from transferkit.compare import dataset_identity
    from transferkit.probe.cache import get_features, resolve_backbone
    from transferkit.report import Report
    from transferkit.select.evaluate import rank_metrics
    from transferkit.select.pipeline import EmbeddingStore, LearnedRanker
    from transferkit.select.scores import (
        Features,
        compute_scores,
        ensemble_ranks,
        resolve_score_names,
        stratified_subset,
    )
    from transferkit.select.source_preds import load_timm_source_head, source_predictions
    from transferkit.select.table import (
        choose_metric,
        read_performance_rows,
        truth_by_dataset,
        write_score_rows,
    )
    from transferkit.utils.io import atomic_write_json

    console = make_console()
    names = _names(args.backbones)
    score_names = resolve_score_names(args.scores)
    dm, spec = resolve_data(args.data, args.image_size)
    spec["split"] = args.split
    identity = dataset_identity(dm)
    key = identity["fingerprint"]
    runs_dir = Path(args.runs_dir)
    run_dir = runs_dir / (args.name or f"rank-{_slug(identity['name'])}-{args.image_size}")
    learned = LearnedRanker.load(args.ranker) if args.ranker else None
    store = tokens = None
    if learned is not None:
        store = EmbeddingStore(
            learned.settings, root=Path(args.ranker) / "embeddings", cache_dir=args.cache_dir
        )
        tokens = store.dataset_tokens(spec, datamodule=dm)

    console.print(
        f"[bold]rank[/bold] {escape(identity['name'])} at {args.image_size}px ({args.split}: "
        f"{len(dm.dataset(args.split))} images, {dm.num_classes} classes): {len(names)} backbones x "
        f"{len(score_names)} scores"
    )
    values: dict[str, dict[str, float]] = {s: {} for s in score_names}
    seconds: dict[str, dict[str, float]] = {s: {} for s in score_names}
    per_backbone: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        bb = resolve_backbone(name, dm.image_size, seed=args.seed)
        build_s = time.perf_counter() - t0
        head = load_timm_source_head(bb) if {"leep", "nce"} & set(score_names) else None
        extra = [head.pooling] if head is not None and head.pooling != bb.pooling else []
        fs = get_features(
            bb, dm, args.split, cache_dir=args.cache_dir, batch_size=args.batch_size, extra_poolings=extra
        )
        x, y = fs.features, np.asarray(fs.labels)
        head_x = fs.view(pooling=head.pooling).features if head is not None else None
        if args.max_samples is not None and len(y) > args.max_samples:
            keep = np.sort(
                stratified_subset(np.unique(y, return_inverse=True)[1], args.max_samples, seed=args.seed)
            )
            x, y = np.asarray(x)[keep], y[keep]
            head_x = None if head_x is None else np.asarray(head_x)[keep]
        feats = Features(x)
        results = compute_scores(
            feats,
            y,
            score_names,
            source_probs_fn=lambda feats=feats, y=y, head=head, head_x=head_x: source_predictions(
                feats, y, head=head, head_features=head_x, seed=args.seed
            ),
        )
        for s, r in results.items():
            values[s][name] = r.value
            seconds[s][name] = r.seconds + r.extra.get("source_seconds", 0.0)  # LEEP: + source predictions
        per_backbone[name] = {
            "num_samples": int(len(y)),
            "dim": int(x.shape[1]),
            "cache_hit": bool(fs.metadata.get("cache_hit")),
            "extract_seconds": float(fs.metadata.get("extract_seconds", 0.0)),
            "build_seconds": build_s,
            "source_predictions": next(
                (r.extra["source"] for r in results.values() if "source" in r.extra), None
            ),
        }
        if learned is not None:
            assert store is not None and tokens is not None
            vec = store.model_vector(name, dm.image_size, backbone=bb)
            t1 = time.perf_counter()
            per_backbone[name]["learned"] = float(learned.score(tokens, vec[None])[0])
            seconds.setdefault("learned", {})[name] = time.perf_counter() - t1
        del bb
    if learned is not None:
        values["learned"] = {n: per_backbone[n]["learned"] for n in names}
    ensemble = ensemble_ranks({s: v for s, v in values.items() if s != "learned"})

    # real accuracies, when compare (or a benchmark) measured them for this dataset
    perf_path = Path(args.performance) if args.performance else runs_dir / "performance.json"
    rows, exact = _matching_rows(read_performance_rows(perf_path), identity)
    truth: dict[str, float] = {}
    correlations: dict[str, dict[str, float]] = {}
    metric = None
    if rows:
        metric = choose_metric(rows, args.metric)
        by_ds = truth_by_dataset([r for r in rows if r.metric == metric])
        truth = next(iter(by_ds.values()))  # exact: one dataset; by name: the first one measured
        if len([n for n in names if n in truth]) >= 2:
            for s, v in values.items():
                correlations[s] = rank_metrics(v, truth)
            correlations["ensemble"] = rank_metrics({m: -r for m, r in ensemble.items()}, truth)

    tables = _rank_tables(names, values, seconds, ensemble, per_backbone, truth, correlations, metric)
    for t in tables:
        console.print(t.to_rich())
    if not truth:
        console.print(
            f"no real accuracies for this dataset in {perf_path} (run 'transferkit compare' on it first)"
        )
    elif not exact:
        console.print(
            f"note: accuracies of '{identity['name']}' were measured at another image size or split setup"
        )

    result = {
        "dataset": identity,
        "spec": spec,
        "split": args.split,
        "backbones": per_backbone,
        "scores": values,
        "score_seconds": seconds,
        "ensemble_rank": ensemble,
        "ranking": {s: sorted(v, key=lambda m: -np.nan_to_num(v[m], nan=-np.inf)) for s, v in values.items()},
        "accuracy": truth,
        "accuracy_metric": metric,
        "accuracy_exact_match": exact if truth else None,
        "correlations": correlations,
        "performance_table": str(perf_path),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "rank.json", result)
    report = Report(f"Transferability ranking: {identity['name']} ({args.split}, {args.image_size}px)")
    report.add_text(
        "Training-free scores on frozen features (higher = more transferable); the ensemble is the mean rank "
        "over the scores. LEEP/NCE use "
        + ", ".join(sorted({str(b["source_predictions"]) for b in per_backbone.values()}))
        + " source predictions."
    )
    for t in tables:
        report.add_table(t)
    md, html = report.write(run_dir)
    write_score_rows(
        runs_dir / "transferability.json",
        [
            {
                "dataset": key,
                "dataset_name": identity["name"],
                "model": n,
                "split": args.split,
                "data": spec,
                "scores": {s: values[s][n] for s in values if n in values[s] and s != "learned"},
            }
            for n in names
        ],
    )
    console.print(
        f"written: {run_dir / 'rank.json'}, {md}, {html}; scores appended to {runs_dir / 'transferability.json'}"
    )
    return 0


def _rank_tables(
    names: list[str],
    values: dict[str, dict[str, float]],
    seconds: dict[str, dict[str, float]],
    ensemble: dict[str, float],
    per_backbone: dict[str, dict[str, Any]],
    truth: dict[str, float],
    correlations: dict[str, dict[str, float]],
    metric: str | None,
) -> list[Any]:
    """One ranked table per score (value, seconds, real accuracy), the ensemble table, the agreement table."""
    from transferkit.report import Table

    real = [f"real {metric}"] if truth else []
    tables = []
    for s, v in values.items():
        order = sorted(v, key=lambda m: -np.nan_to_num(v[m], nan=-np.inf))
        rows = [
            [i, n, v[n], seconds.get(s, {}).get(n), *([truth.get(n)] if truth else [])]
            for i, n in enumerate(order, 1)
        ]
        note = None
        if s in correlations:
            c = correlations[s]
            note = f"Kendall tau {_fmt(c['kendall_tau'])}, weighted tau {_fmt(c['weighted_tau'])}, top-1 hit {c['top1_hit']:.0f}"
        seconds_note = " (includes the source predictions)" if s == "leep" else ""
        tables.append(
            Table(
                ["#", "backbone", s, f"seconds{seconds_note}", *real],
                rows,
                title=f"{s}",
                formats={s: _fmt, f"seconds{seconds_note}": ".3f"},
                note=note,
            )
        )
    rows = []
    for i, n in enumerate(sorted(ensemble, key=lambda m: ensemble[m]), 1):
        b = per_backbone[n]
        extract = "cached" if b["cache_hit"] else f"{b['extract_seconds']:.1f}"
        rows.append(
            [i, n, ensemble[n], f"{b['num_samples']}x{b['dim']}", extract, *([truth.get(n)] if truth else [])]
        )
    tables.append(
        Table(
            ["#", "backbone", "mean rank", "features", "extract s", *real],
            rows,
            title="ensemble: mean rank over the training-free scores (1 = best)",
            formats={"mean rank": ".2f"},
        )
    )
    if correlations:
        rows = [
            [s, c["kendall_tau"], c["weighted_tau"], c["top1_hit"], c["top1_regret"]]
            for s, c in correlations.items()
        ]
        tables.append(
            Table(
                ["score", "Kendall tau", "weighted tau", "top-1 hit", "top-1 regret"],
                rows,
                title=f"agreement with real accuracies ({metric}, {len(truth)} backbones measured)",
                formats={
                    "Kendall tau": ".3f",
                    "weighted tau": ".3f",
                    "top-1 hit": ".0f",
                    "top-1 regret": ".4f",
                },
            )
        )
    return tables


# ---------------------------------------------------------------------------------------------- train
def _train_config(args: Any, epochs: int) -> Any:
    from transferkit.select.trainers import TrainConfig

    return TrainConfig(
        max_epochs=epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs,
        grad_clip=args.grad_clip,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=args.progress,
    )


def _trainers(args: Any) -> tuple[Any, Any]:
    """The autoencoder trainer and a factory of ranker trainers, configured from the CLI options."""
    from transferkit.select.trainers import AutoencoderTrainer, RankerTrainer

    hidden = [int(h) for h in str(args.ae_hidden).split(",") if h.strip()]
    ae_options = dict(
        hidden=hidden,
        code_dim=args.code_dim,
        activation=args.activation,
        dropout=args.dropout,
        loss=args.ae_loss,
        l1_code=args.l1_code,
    )
    ae = AutoencoderTrainer(model=ae_options, train=_train_config(args, args.ae_epochs))
    ranker_options = dict(d_model=args.d_model, heads=args.heads, layers=args.layers, dropout=args.dropout)

    def make_ranker() -> RankerTrainer:
        return RankerTrainer(model=ranker_options, loss=args.loss, train=_train_config(args, args.epochs))

    return ae, make_ranker


def _load_table(
    path: str | None, runs_dir: str, metric: str | None
) -> tuple[list[Any], Path, dict[str, Any]]:
    """Rows of one metric of the performance table, its path, and the dataset specs the score tables know
    (next to the table and in ``runs_dir``)."""
    from transferkit.select.table import choose_metric, read_performance_rows

    table = Path(path) if path else Path(runs_dir) / "performance.json"
    if not table.is_file():
        raise UserError(
            f"no performance table at {table}; run 'transferkit compare' (it appends to runs/performance.json) "
            "or build one with 'transferkit rank benchmark --data digits --backbones ...'"
        )
    rows = read_performance_rows(table)
    m = choose_metric(rows, metric)
    known = {
        **_known_specs(Path(runs_dir) / "transferability.json"),
        **_known_specs(table.parent / "transferability.json"),
    }
    return [r for r in rows if r.metric == m], table, known


def _train(args: Any) -> int:
    from transferkit.select.trainers import get_trainer, list_trainers

    console = make_console()
    if args.list or not args.trainer:
        t = Table(
            title="trainers ('transferkit rank train NAME'; case-insensitive, 'Trainer' suffix optional)"
        )
        for col in ("name", "class", "trains"):
            t.add_column(col)
        for name, cls, desc in list_trainers():
            t.add_row(name, cls, desc)
        console.print(t)
        return 0
    trainer_cls = get_trainer(args.trainer)
    out = Path(args.runs_dir) / (args.name or f"rank-train-{trainer_cls.name}")
    if trainer_cls.name == "autoencoder":
        return _train_autoencoder(args, out, console)
    return _train_ranker(args, out, console)


def _store(args: Any, out: Path) -> Any:
    from transferkit.select.pipeline import EmbeddingSettings, EmbeddingStore

    settings = EmbeddingSettings(
        encoder=args.encoder,
        max_samples=args.max_samples,
        stats_dim=args.stats_dim,
        stats_slots=args.stats_slots,
    )
    return EmbeddingStore(settings, root=out / "embeddings", cache_dir=args.cache_dir)


def _train_autoencoder(args: Any, out: Path, console: Console) -> int:
    from transferkit.select.pipeline import model_image_sizes

    if args.backbones:
        sizes = {n: 224 for n in _names(args.backbones)}
    else:
        rows, _, _ = _load_table(args.table, args.runs_dir, args.metric)
        sizes = model_image_sizes(rows)
    store = _store(args, out)
    names = sorted(sizes)
    with console.status("weight statistics") as status:
        vectors = []
        for n in names:
            status.update(f"weight statistics of {n}")
            vectors.append(store.model_vector(n, sizes[n]))
    ae, _ = _trainers(args)
    ae.out_dir = out
    result = ae.fit(np.stack(vectors), names)
    console.print(f"[bold]autoencoder[/bold] on {len(names)} backbones: {', '.join(names)}")
    _print_history(console, result.history, result.files)
    return 0


def _train_ranker(args: Any, out: Path, console: Console) -> int:
    from transferkit.select.pipeline import train_learned_ranker

    rows, table, known = _load_table(args.table, args.runs_dir, args.metric)
    store = _store(args, out)
    ae, make_ranker = _trainers(args)
    if args.autoencoder:
        ae = _PretrainedAutoencoder(args.autoencoder)
    with console.status("embedding models and datasets, training") as status:
        bundle, examples, results = train_learned_ranker(
            rows, store, ae, make_ranker(), out_dir=out, progress=status.update, known_specs=known
        )
    console.print(
        f"performance table {table} ({rows[0].metric}): {len(examples)} datasets, {len(bundle.meta['models'])} "
        f"models; dataset encoder {bundle.settings.encoder}"
    )
    for name, res in results.items():
        console.print(f"[bold]{name}[/bold]")
        _print_history(console, res.history, res.files)
    console.print(f"learned ranker written to {out} (use it with 'transferkit rank ... --ranker {out}')")
    return 0


class _PretrainedAutoencoder:
    """Stands in for an AutoencoderTrainer: returns an already trained autoencoder (``--autoencoder DIR``)."""

    def __init__(self, path: str):
        import torch

        from transferkit.select.model_embed import WeightAutoencoder

        file = Path(path) / "model.pt" if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise UserError(f"no trained autoencoder at {path} (expected a folder with model.pt)")
        self.model = WeightAutoencoder.from_checkpoint(torch.load(file, weights_only=False))
        self.out_dir = None

    def fit(self, vectors: np.ndarray, names: Any = None) -> Any:
        from transferkit.select.trainers import TrainResult

        return TrainResult(self.model, {"trainer": "autoencoder", "pretrained": True, "epochs": []})


def _print_history(console: Console, history: dict[str, Any], files: dict[str, Path]) -> None:
    rows = history.get("epochs", [])
    if rows:
        last = rows[-1]
        best = history.get("best_epoch")
        console.print(
            f"  {history['epochs_run']} epochs in {history['seconds']:.1f}s"
            f"{' (early stop)' if history.get('stopped_early') else ''}; best epoch {best}, "
            f"val loss {_fmt(history.get('best_val_loss') or float('nan'))}; last train loss "
            f"{_fmt(last.get('train/loss', float('nan')))}, lr {last.get('lr', float('nan')):.2e}"
        )
    for kind, path in files.items():
        console.print(f"  {kind}: {path}")


# ---------------------------------------------------------------------------------------------- evaluate
def _evaluate(args: Any) -> int:
    from transferkit.report import Report
    from transferkit.report import Table as ReportTable
    from transferkit.select.pipeline import evaluate_lodo, train_learned_ranker
    from transferkit.select.table import read_score_rows, scores_by_dataset
    from transferkit.utils.io import atomic_write_json

    console = make_console()
    rows, table, known = _load_table(args.table, args.runs_dir, args.metric)
    score_path = Path(args.scores) if args.scores else table.parent / "transferability.json"
    baselines = scores_by_dataset(read_score_rows(score_path))
    out = Path(args.runs_dir) / (args.name or "rank-evaluate")
    store = _store(args, out)
    ae, make_ranker = _trainers(args)
    # the autoencoder sees no accuracy (weights only): trained once on every model; the ranker once per fold
    with console.status("embedding models and datasets") as status:
        _, examples, _ = train_learned_ranker(
            rows, store, ae, make_ranker(), out_dir=None, progress=status.update, known_specs=known
        )
    with console.status("leave-one-dataset-out") as status:
        result = evaluate_lodo(
            examples,
            make_ranker,
            baselines,
            progress=lambda k: status.update(f"leave-one-dataset-out: holding out {k}"),
        )
    summary = result.summary()
    order = sorted(summary, key=lambda m: -np.nan_to_num(summary[m]["kendall_tau"], nan=-9))
    t = ReportTable(
        ["method", "datasets", "Kendall tau", "weighted tau", "top-1 hit", "top-1 regret"],
        [
            [
                m,
                summary[m]["datasets"],
                *(summary[m][k] for k in ("kendall_tau", "weighted_tau", "top1_hit", "top1_regret")),
            ]
            for m in order
        ],
        title=f"leave-one-dataset-out over {len(examples)} datasets ({rows[0].metric}, {table})",
        formats={
            "datasets": ".0f",
            "Kendall tau": ".3f",
            "weighted tau": ".3f",
            "top-1 hit": ".3f",
            "top-1 regret": ".4f",
        },
        note="ranker: trained on the other datasets; random: expectation over random orders; the others: "
        "training-free scores of the score table.",
    )
    console.print(t.to_rich())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "lodo.json", {"table": str(table), "scores": str(score_path), **result.to_dict()})
    report = Report("Learned ranker: leave-one-dataset-out").add_table(t)
    md, _ = report.write(out)
    console.print(f"written: {out / 'lodo.json'}, {md}")
    return 0


# ---------------------------------------------------------------------------------------------- benchmark
def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> float:
    """Test accuracy of an L2-regularised logistic-regression probe (scikit-learn L-BFGS on standardised
    features, the linear-probe protocol of the CLIP paper)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def _benchmark(args: Any) -> int:
    import hashlib

    from transferkit.compare import dataset_identity
    from transferkit.probe.cache import get_features, resolve_backbone
    from transferkit.report import Table as ReportTable
    from transferkit.select.pipeline import data_spec, dataset_key
    from transferkit.select.scores import Features, compute_scores
    from transferkit.select.source_preds import source_predictions
    from transferkit.select.table import PerfRow, write_performance_rows, write_score_rows

    console = make_console()
    names = _names(args.backbones)
    dm, spec = resolve_data(args.data, args.image_size)
    identity = dataset_identity(dm)
    classes = list(dm.class_names)
    if not 2 <= args.classes_per_task <= len(classes):
        raise UserError(f"--classes_per_task must be between 2 and {len(classes)} (the dataset's classes)")
    rng = np.random.default_rng(args.seed)
    tasks: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(args.tasks * 50):
        if len(tasks) == args.tasks:
            break
        pick = tuple(sorted(rng.choice(len(classes), args.classes_per_task, replace=False).tolist()))
        if pick not in seen:
            seen.add(pick)
            tasks.append(list(pick))
    specs, keys = [], []
    for task in tasks:
        sub = data_spec(spec["source"], spec["path"], dm.image_size, [classes[c] for c in task], "train")
        specs.append(sub)
        blob = identity["fingerprint"] + "|" + ",".join(sub["classes"])
        keys.append(hashlib.blake2b(blob.encode(), digest_size=16).hexdigest())
    out = Path(args.out) if args.out else Path(args.runs_dir) / "rank-benchmark"
    metric = f"logreg_probe/{args.eval_split}/top1"
    perf_rows, score_rows = [], []
    accs: dict[str, dict[str, float]] = {}
    for name in names:
        bb = resolve_backbone(name, dm.image_size, seed=args.seed)
        tr = get_features(bb, dm, "train", cache_dir=args.cache_dir, batch_size=args.batch_size)
        te = get_features(bb, dm, args.eval_split, cache_dir=args.cache_dir, batch_size=args.batch_size)
        xtr, ytr = np.asarray(tr.features), np.asarray(tr.labels)
        xte, yte = np.asarray(te.features), np.asarray(te.labels)
        with console.status(f"{name}: probing and scoring {len(tasks)} tasks"):
            for task, sub, key in zip(tasks, specs, keys):
                mtr, mte = np.isin(ytr, task), np.isin(yte, task)
                acc = probe_accuracy(xtr[mtr], ytr[mtr], xte[mte], yte[mte], seed=args.seed)
                accs.setdefault(dataset_key(sub), {})[name] = acc
                data = {**sub, "num_classes": len(task), "num_train": int(mtr.sum())}
                perf_rows.append(
                    PerfRow(key, name, acc, metric=metric, dataset_name=dataset_key(sub), data=data)
                )
                feats, yy = Features(xtr[mtr]), ytr[mtr]
                res = compute_scores(
                    feats,
                    yy,
                    source_probs_fn=lambda feats=feats, yy=yy: source_predictions(feats, yy, seed=args.seed),
                )
                score_rows.append(
                    {
                        "dataset": key,
                        "dataset_name": dataset_key(sub),
                        "model": name,
                        "split": "train",
                        "data": sub,
                        "scores": {s: r.value for s, r in res.items()},
                    }
                )
        console.print(f"{escape(name)}: {len(tasks)} tasks probed and scored")
        del bb
    write_performance_rows(out / "performance.json", perf_rows)
    write_score_rows(out / "transferability.json", score_rows)
    task_keys = list(accs)
    cols = [f"T{i}" for i in range(1, len(task_keys) + 1)]
    t = ReportTable(
        ["backbone", *cols, "mean"],
        [
            [n, *(accs[k][n] for k in task_keys), float(np.mean([accs[k][n] for k in task_keys]))]
            for n in names
        ],
        title=f"benchmark: logistic-regression probe accuracy per task ({args.eval_split} split)",
        formats={c: ".3f" for c in [*cols, "mean"]},
        note="; ".join(f"{c} = {k}" for c, k in zip(cols, task_keys)),
    )
    console.print(t.to_rich())
    console.print(
        f"written: {out / 'performance.json'} ({len(perf_rows)} rows), {out / 'transferability.json'}"
    )
    return 0
