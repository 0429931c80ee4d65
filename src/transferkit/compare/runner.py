"""The comparison runner: every backbone through the same frozen-feature protocols on one dataset.

For every backbone (built once, random-init parts seeded):

1. features of train/val/test are extracted once (or read from the cache, :mod:`transferkit.probe.cache`):
   the last ``max(probe.layers)`` blocks, every pooling the probes need;
2. linear probe: a grid of heads (poolings x last-k blocks x learning rates x weight decays) trained together in
   one pass per epoch over the cached features (:mod:`transferkit.probe.linear`); the best head on val is
   reported on test; then the logistic regression on the variant the grid chose (C chosen on val);
3. kNN: weighted cosine kNN (k in 10/20/100/200, T = 0.07) on the final-layer features; k chosen on val,
   reported on test (:mod:`transferkit.probe.knn`);
4. optionally a short full fine-tune with the recipe of ``configs/classification/finetune.yaml``: ``transferkit
   fit`` of the classification task into ``<run>/finetune/<backbone>/``, reported at its best checkpoint on val,
   as every fit run is, with its per-epoch history and whether it had converged.

Then pretrained-vs-random-twin gains, pairwise tests and fair pairs (:mod:`transferkit.compare.stats`), the
strongest linear protocol and the doubts (:mod:`transferkit.compare.doubts`), the report
(:mod:`transferkit.compare.report`), ``results.json`` (everything, :class:`~transferkit.compare.results.CompareResults`),
``metrics.json`` (the final numbers) and rows of the results table (:mod:`transferkit.results`).
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.backbones import backbone_options, resolve_backbone
from transferkit.backbones.base import Backbone
from transferkit.compare.doubts import (
    DOUBT_RULES,
    STRONGEST_LINEAR_RULE,
    find_doubts,
    finetune_convergence,
    lr_edge,
    strongest_linear,
)
from transferkit.compare.options import (
    DEFAULT_BACKBONES,
    FINETUNE_PRECISION,
    FinetuneOptions,
    KnnOptions,
    ProbeOptions,
    parse_backbones,
)
from transferkit.compare.report import build_report, make_plots
from transferkit.compare.results import (
    TABLE_PROTOCOLS,
    BackboneResult,
    CompareResults,
    EpochRecord,
    FinetuneResult,
    GridResult,
    KnnResult,
    LogisticResult,
    ProtocolResult,
)
from transferkit.compare.stats import fair_pairs, pairwise_tests, pretraining_gains, seed_summary, wilson_ci
from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions, get_features, measure_throughput, resolve_precision
from transferkit.probe.knn import knn_evaluate
from transferkit.probe.linear import (
    LinearGridConfig,
    feature_variants,
    train_linear_grid,
    train_logistic_regression,
)
from transferkit.probe.rows import FeatureRows
from transferkit.results import ResultRow, ResultsTable, dataset_entry
from transferkit.runs import RunDir
from transferkit.utils.devices import default_device
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def _probe_layers(bb: Backbone, wanted: Sequence[int], image_size: int) -> list[int]:
    """``wanted`` capped at the depth; only 1 when the last blocks differ in width (hierarchical models) or the
    backbone has no per-block features."""
    ks = sorted({max(1, min(int(k), bb.num_blocks or 1)) for k in wanted})
    if ks == [1] or not ks:
        return [1]
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 3, image_size, image_size, device=next(bb.parameters()).device)
            dims = {t.shape[-1] for t in bb.eval().forward_intermediates(x, max(ks))}
    except UserError as e:
        log.info("'%s': no multi-block features (%s); probing the final block only", bb.name, e)
        return [1]
    if len(dims) > 1:
        log.info(
            "'%s': last %d blocks differ in width %s; probing the final block only", bb.name, max(ks), dims
        )
        return [1]
    return ks


def _default_poolings(bb: Backbone) -> list[str]:
    return [p for p in dict.fromkeys([bb.pooling, "mean"]) if p in bb.supported_poolings]


# ---------------------------------------------------------------------------------------------- fine-tune
def finetune_backbone(
    name: str,
    spec: DataSpec,
    opts: FinetuneOptions,
    runs_dir: Path,
    *,
    language: bool,
    patch_size: int | None,
    seed: int,
    device: str,
    progress: bool,
) -> tuple[FinetuneResult, np.ndarray | None, np.ndarray | None]:
    """``transferkit fit`` of ``ImageClassifier(adaptation=finetune)`` on ``name`` into ``runs_dir/<slug>``, with
    the recipe of ``configs/classification/finetune.yaml`` (:data:`FINETUNE_PRESET`) as ``opts`` set it.

    The same LightningCLI set-up as any fit run (run directory, logs, checkpoints, ``best.ckpt`` chosen on val
    top-1, evaluated on val and test). Returns the best checkpoint's numbers from the run's ``metrics.json``
    with the per-epoch history of its logs and the convergence verdict, and the best checkpoint's per-image
    test correctness and test labels (None when some test images were skipped as unreadable).
    """
    from transferkit.lightning_cli import run_lightning
    from transferkit.utils.ranks import refuse_training_under_launcher

    refuse_training_under_launcher(f"the fine-tune of '{name}'")
    backbone: dict[str, Any] = {"name": name, "seed": seed}  # the same start as the probed backbone
    if patch_size is not None:
        backbone["patch_size"] = patch_size
    model = {
        "class_path": "transferkit.tasks.ImageClassifier",
        "init_args": {
            "backbone": backbone,
            "adaptation": "finetune",
            "optimizer": {
                "name": "adamw",
                "blr": opts.blr,
                "weight_decay": opts.weight_decay,
                "layer_decay": opts.layer_decay,
                "warmup_epochs": opts.warmup_epochs,
                "lr_mult": {"patch_embed": opts.patch_embed_lr_mult} if language else {},
            },
            "regularization": {"label_smoothing": opts.label_smoothing},
        },
    }
    image_size = opts.image_size or spec.image_size
    data = {
        "class_path": "transferkit.data.ImageClassificationDataModule",
        "init_args": {**spec.init_args, "batch_size": opts.batch_size, "image_size": image_size},
    }
    trainer: dict[str, Any] = {
        "max_epochs": opts.epochs,
        "accelerator": "gpu" if str(device).startswith("cuda") else "cpu",
        "devices": 1,
        "precision": FINETUNE_PRECISION,
        "gradient_clip_val": opts.gradient_clip_val or None,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 5,
    }
    if opts.limit_train_batches is not None:
        trainer["limit_train_batches"] = opts.limit_train_batches
    slug = name.replace("/", "_").replace(":", "_")
    argv = ["fit", f"--model={json.dumps(model)}", f"--data={json.dumps(data)}", f"--trainer={json.dumps(trainer)}",
            "--seed_everything", str(seed), "--name", slug, "--runs_dir", str(runs_dir)]  # fmt: skip
    start = time.perf_counter()
    cli = run_lightning(argv)
    seconds = time.perf_counter() - start
    run = RunDir(cli.run_dir)
    metrics = run.read_metrics()
    val, test = metrics["val"], metrics["test"]
    correct, labels = _test_correct(cli.model, cli.datamodule)
    history = read_fit_history(run.path)
    converged, reason = finetune_convergence(history)
    result = FinetuneResult(
        val_acc1=val["acc1"],
        test_acc1=test["acc1"],
        test_acc5=test["acc5"],
        test_ci95=wilson_ci(int(correct.sum()), len(correct)) if correct is not None else None,
        per_class_acc=list(test["per_class_acc"].values()),
        epochs=opts.epochs,
        image_size=int(image_size),
        seconds=round(seconds, 2),
        run_dir=str(run.path),
        checkpoint=metrics.get("best_checkpoint"),
        history=history,
        converged=converged,
        convergence=reason,
    )
    log.info(
        "fine-tune of %s: test top-1 %.4f; converged: %s (%s)", name, result.test_acc1, converged, reason
    )
    return result, correct, labels


def _test_correct(model: Any, datamodule: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-image test correctness and labels of ``model`` (a fit's task after testing its best checkpoint: it
    holds those weights) on the datamodule's test split, in dataset order; ``(None, None)`` when a batch was
    skipped (unreadable images), which would misalign them with the probes'."""
    device = next(model.parameters()).device
    model.eval()
    correct, labels = [], []
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():
            if batch is None:
                return None, None
            images, y = batch
            correct.append((model(images.to(device)).argmax(-1).cpu() == y).numpy())
            labels.append(y.numpy())
    if not labels:
        return None, None
    return np.concatenate(correct), np.concatenate(labels)


def read_fit_history(run_dir: str | Path) -> list[EpochRecord]:
    """Per training epoch of a fit run: the mean train loss (``train/loss_epoch``) and val top-1 (``val/acc1``)
    from its CSV logs (``log/version_*/metrics.csv``; a later attempt's epochs replace an earlier one's). The
    evaluation of the best checkpoint after training is logged at the epoch after the last and is left out."""
    epochs: dict[int, dict[str, float | None]] = {}
    logs = sorted(Path(run_dir).glob("log/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:] or 0))
    for path in logs:
        seen: dict[int, dict[str, float | None]] = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                e = seen.setdefault(int(float(row["epoch"])), {"train_loss": None, "val_acc1": None})
                if row.get("train/loss_epoch"):
                    e["train_loss"] = float(row["train/loss_epoch"])
                if row.get("val/acc1") and e["val_acc1"] is None:  # the epoch's own validation, first
                    e["val_acc1"] = float(row["val/acc1"])
        epochs.update({k: v for k, v in seen.items() if v["train_loss"] is not None})
    return [EpochRecord(k, v["train_loss"], v["val_acc1"]) for k, v in sorted(epochs.items())]


# ---------------------------------------------------------------------------------------------- one backbone
def compare_backbone(
    name: str,
    datamodule: Any,
    *,
    probe: ProbeOptions,
    knn: KnnOptions,
    extract: ExtractOptions,
    seed: int,
    options: dict[str, Any] | None = None,
    timed: bool = True,
) -> tuple[BackboneResult, dict[str, np.ndarray]]:
    """Features (cached), linear-probe grid, logistic regression and kNN for one backbone (and, with ``timed``,
    its throughput).

    Returns its result and the per-image test correctness per protocol (``{'linear': (N,) bool, ...}``) with
    the test labels under ``'labels'``. ``options``: build options of the backbone (e.g. a language model's
    ``patch_size``).
    """
    bb = resolve_backbone(name, datamodule.image_size, seed=seed, **(options or {}))
    device = extract.device or default_device()
    poolings = list(probe.poolings) if probe.poolings else _default_poolings(bb)
    for p in poolings:
        bb.check_pooling(p)
    knn_pooling = bb.check_pooling(knn.pooling or bb.pooling)
    layers = _probe_layers(bb, probe.layers, datamodule.image_size)
    extra = [p for p in dict.fromkeys([*poolings[1:], knn_pooling]) if p != poolings[0]]
    feats = {}
    for split in ("train", "val", "test"):
        feats[split] = get_features(
            bb,
            datamodule,
            split,
            layers=max(layers),
            pooling=poolings[0],
            extra_poolings=extra,
            **{**extract.kwargs(), "device": device},
        )
    meta = feats["train"].metadata
    variants = feature_variants(feats["train"], feats["val"], feats["test"], poolings=poolings, layers=layers)
    labels = {s: fs.label_tensor() for s, fs in feats.items()}
    grid_cfg = LinearGridConfig(
        learning_rates=tuple(probe.learning_rates),
        epochs=probe.epochs,
        batch_size=probe.batch_size,
        weight_decays=tuple(probe.weight_decays),
        normalize=probe.normalize,
        seed=seed,
        precision=probe.precision,
    )
    grid = train_linear_grid(variants, labels, datamodule.num_classes, grid_cfg, device=device)
    logreg = None
    if probe.logreg:  # the L-BFGS protocol on the variant the grid chose on val (no test data looked at)
        chosen = next(v for v in variants if v.name == grid.best["variant"])
        lr_feats = {s: FeatureRows(x).load() for s, x in chosen.features.items()}
        logreg = train_logistic_regression(lr_feats, labels, datamodule.num_classes, device=device)
        del lr_feats
    knn_feats = {s: fs.view(knn_pooling, None) for s, fs in feats.items()}
    knn_res = knn_evaluate(
        knn_feats["train"],  # memory-mapped rows, searched block by block
        knn_feats["train"].labels,
        {s: (knn_feats[s], knn_feats[s].labels) for s in ("val", "test")},
        datamodule.num_classes,
        ks=knn.ks,
        temperature=knn.temperature,
        device=device,
    )
    y_test = np.asarray(feats["test"].labels)
    correct = {
        "linear": np.asarray(grid.test_pred) == y_test,
        "knn": knn_res.pop("predictions")["test"] == y_test,
    }
    if logreg is not None:
        correct["logreg"] = np.asarray(logreg.test_pred) == y_test
    n_test = len(y_test)
    # its own timed section, whatever the cache held (a cached pass's figure is the load of another day)
    speed = (
        measure_throughput(
            bb, datamodule, batch_size=extract.batch_size or 32, device=device, precision=extract.precision
        )
        if timed
        else None
    )
    protocols: dict[str, ProtocolResult] = {
        "linear": _grid_result(grid, correct["linear"], poolings, layers, probe)
    }
    if logreg is not None:
        protocols["logreg"] = LogisticResult(
            val_acc1=logreg.val["acc1"],
            test_acc1=logreg.test["acc1"],
            test_acc5=logreg.test["acc5"],
            test_ci95=wilson_ci(int(correct["logreg"].sum()), n_test),
            per_class_acc=logreg.test["per_class_acc"],
            variant=grid.best["variant"],
            c=logreg.c,
            seconds=round(logreg.seconds, 3),
            sweep=logreg.sweep,
        )
    protocols["knn"] = KnnResult(
        val_acc1=knn_res["val_acc1"],
        test_acc1=knn_res["test_acc1"],
        test_ci95=wilson_ci(int(correct["knn"].sum()), n_test),
        per_class_acc=knn_res["per_class_acc"]["test"],
        pooling=knn_pooling,
        temperature=knn.temperature,
        best_k=knn_res["best_k"],
        acc1={s: {str(k): v for k, v in d.items()} for s, d in knn_res["acc1"].items()},
    )
    result = BackboneResult(
        name=name,
        pretrained=bool(bb.pretrained),
        family=bb.family,
        modality=bb.modality,
        num_params=int(bb.num_params()),
        left_out_params={k: int(v) for k, v in bb.left_out_parameters().items()},
        embed_dim=int(bb.embed_dim),
        num_blocks=int(bb.num_blocks),
        default_pooling=bb.pooling,
        weights_digest=meta["weights_digest"],
        features={
            s: {
                "cache_hit": fs.metadata["cache_hit"],
                "path": str(fs.path),
                "throughput_img_s": fs.metadata["throughput_img_s"],
                "extract_seconds": fs.metadata["extract_seconds"],
                "num_images": fs.num_samples,
            }
            for s, fs in feats.items()
        },
        throughput=speed,
        protocols=protocols,
    )
    del bb, feats, knn_feats, variants
    gc.collect()
    return result, {**correct, "labels": y_test}


def _grid_result(
    grid: Any, correct: np.ndarray, poolings: list[str], layers: list[int], probe: ProbeOptions
) -> GridResult:
    """The grid's result; the final learning rates, extensions and edge come from the grid when it reports them
    (automatic extension), else from its config and the chosen head."""
    lrs = [float(x) for x in (getattr(grid, "learning_rates", None) or grid.config["learning_rates"])]
    edge = grid.lr_edge if hasattr(grid, "lr_edge") else lr_edge(float(grid.best["lr"]), lrs)
    return GridResult(
        val_acc1=grid.val["acc1"],
        test_acc1=grid.test["acc1"],
        test_acc5=grid.test["acc5"],
        test_ci95=wilson_ci(int(correct.sum()), len(correct)),
        per_class_acc=grid.test["per_class_acc"],
        best_head=grid.best,
        poolings=poolings,
        layers=layers,
        num_heads=len(grid.heads),
        epochs=probe.epochs,
        seconds=round(grid.seconds, 3),
        learning_rates=lrs,
        extensions=int(getattr(grid, "extensions", 0) or 0),
        lr_edge=edge,
        grid=grid.heads,
    )


# ---------------------------------------------------------------------------------------------- the run
def run_compare(
    spec: DataSpec,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    *,
    run: RunDir,
    probe: ProbeOptions | None = None,
    knn: KnnOptions | None = None,
    finetune: FinetuneOptions | None = None,
    extract: ExtractOptions | None = None,
    seed: int = 0,
    seeds: int = 1,
    patch_size: int | None = None,
    with_fair_pairs: bool = True,
    fair_max_ratio: float = 4.0,
    results_table: ResultsTable | None = None,
    on_backbone: Callable[[BackboneResult], None] | None = None,
) -> CompareResults:
    """Compare ``backbones`` on the dataset ``spec`` describes, in the run directory ``run``.

    Writes ``results.json`` (everything), ``metrics.json`` (final numbers), ``report.md``/``report.html``,
    ``plots/`` and, with ``finetune``, a fit run per backbone under ``finetune/``; appends one row per
    (backbone, protocol) to ``results_table`` (None = don't). ``on_backbone(result)`` is called after each
    backbone. With ``seeds`` > 1 the probes and kNN are repeated with seeds ``seed + 1`` ... (random-init
    weights, heads and batch order change; features of pretrained weights come from the cache) and every
    backbone gets ``seeds``: mean, spread and values per protocol; the tests and tables of one run use ``seed``.
    Returns the results (``results.json`` is their :meth:`~CompareResults.to_dict`).
    """
    if seeds < 1:
        raise UserError(f"seeds must be >= 1, got {seeds}")
    if not fair_max_ratio >= 1:
        raise UserError(f"fair_max_ratio is a size ratio >= 1, got {fair_max_ratio}")
    probe = probe or ProbeOptions()
    knn = knn or KnnOptions()
    extract = extract or ExtractOptions()
    device = extract.device or default_device()
    names = parse_backbones(backbones)
    options = backbone_options(names, patch_size)
    if spec.classes is not None:
        raise UserError(
            "compare measures whole datasets; data.classes (a class subset) is for 'transferkit rank benchmark' "
            "tasks: drop --data.classes, or make a folder dataset of those classes"
        )
    started = time.time()
    datamodule = spec.build()
    dataset = spec.describe()
    entries: list[BackboneResult] = []
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        log.info("comparing %s on %s", name, dataset["name"])
        entry, correct[name] = compare_backbone(
            name, datamodule, probe=probe, knn=knn, extract=extract, seed=seed, options=options[name]
        )
        if seeds > 1:
            more = [
                compare_backbone(
                    name,
                    datamodule,
                    probe=probe,
                    knn=knn,
                    extract=extract,
                    seed=s,
                    options=options[name],
                    timed=False,
                )[0]
                for s in range(seed + 1, seed + seeds)
            ]
            entry.seeds = {
                "seeds": list(range(seed, seed + seeds)),
                **{
                    protocol: seed_summary([e.protocols[protocol].test_acc1 for e in (entry, *more)])
                    for protocol in entry.protocols
                },
            }
        if finetune is not None:
            ft, ft_correct, ft_labels = finetune_backbone(
                name,
                spec,
                finetune,
                run.path / "finetune",
                language=entry.modality == "language",
                patch_size=options[name].get("patch_size"),
                seed=seed,
                device=device,
                progress=extract.progress,
            )
            entry.protocols["finetune"] = ft
            if ft_correct is not None and np.array_equal(ft_labels, correct[name]["labels"]):
                correct[name]["finetune"] = ft_correct
            else:
                log.warning(
                    "%s: the fine-tune's test images do not line up with the probes'; no McNemar tests", name
                )
        entries.append(entry)
        if on_backbone is not None:
            on_backbone(entry)

    protocol: dict[str, Any] = {
        "probe": {**asdict(probe), "precision": resolve_precision(probe.precision, device)},
        "knn": asdict(knn),
        "finetune": _finetune_settings(finetune, spec) if finetune is not None else None,
        "seed": seed,
        "seeds": seeds,
        "fair_max_ratio": fair_max_ratio,
        "device": device,
        "precision": resolve_precision(extract.precision, device),
        "storage": extract.storage,
        "selection": "best on val, reported on test",
    }
    results = summarize(
        entries,
        correct,
        run=run.name,
        dataset=dataset,
        protocol=protocol,
        fair_max_ratio=fair_max_ratio if with_fair_pairs else None,
        started=started,
    )
    write_run(results, run, results_table)
    return results


def summarize(
    backbones: list[BackboneResult],
    correct: Mapping[str, Mapping[str, np.ndarray]],
    *,
    run: str,
    dataset: dict[str, Any],
    protocol: dict[str, Any],
    fair_max_ratio: float | None = 4.0,
    started: float | None = None,
) -> CompareResults:
    """The run's results from its backbones' results and their per-image test correctness
    ``correct[name][protocol]``: the strongest linear protocol, pretraining gains, pairwise tests, fair pairs
    (None = none) and the doubts; ``protocol`` (the settings) gets the rules."""
    started = time.time() if started is None else started
    results = CompareResults(
        run=run,
        dataset=dataset,
        protocol={**protocol, "rules": {"strongest_linear": STRONGEST_LINEAR_RULE, **DOUBT_RULES}},
        backbones=backbones,
        strongest_linear=strongest_linear(backbones),
        pretraining_gains=pretraining_gains(backbones, correct),
        pairwise=pairwise_tests(backbones, correct),
        fair_pairs=fair_pairs(backbones, fair_max_ratio) if fair_max_ratio is not None else [],
        started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        wall_time_s=round(time.time() - started, 2),
        torch=torch.__version__,
    )
    results.doubts = find_doubts(results)
    for d in results.doubts:
        log.warning("doubt (%s): %s", d.kind, d.message)
    return results


def write_run(results: CompareResults, run: RunDir, results_table: ResultsTable | None = None) -> None:
    """Plots, ``results.json``, ``metrics.json`` and the report into ``run``; rows into ``results_table``."""
    plots = make_plots(results, run.path / "plots")
    results.plots = {k: str(p.relative_to(run.path)) for k, p in plots.items()}
    atomic_write_json(run.path / "results.json", results.to_dict())
    run.update_metrics(final_metrics(results))
    build_report(results, plots).write(run.path)
    if results_table is not None:
        results_table.append(result_rows(results))
        results.results_table = str(results_table.path)


def _finetune_settings(finetune: FinetuneOptions, spec: DataSpec) -> dict[str, Any]:
    """The fine-tune's options as run, with its precision and how it differs from the preset."""
    image_size = finetune.image_size or spec.image_size
    return {
        **asdict(finetune),
        "image_size": image_size,
        "precision": FINETUNE_PRECISION,
        "preset": "configs/classification/finetune.yaml",
        "differences_from_preset": finetune.differences_from_preset(image_size),
    }


def final_metrics(results: CompareResults) -> dict[str, Any]:
    """The ``metrics.json`` of a compare run: per backbone and protocol val/test top-1 (and CI), the gains, the
    strongest linear protocol and the doubts."""
    keys = {"linear": (), "logreg": ("c",), "knn": ("best_k",), "finetune": ("run_dir", "converged")}
    per = {}
    for b in results.backbones:
        row: dict[str, Any] = {}
        for p, r in b.protocols.items():
            figures = {"val_acc1": r.val_acc1, "test_acc1": r.test_acc1, "test_ci95": _plain_ci(r.test_ci95)}
            if r.test_acc5 is not None:
                figures["test_acc5"] = r.test_acc5
            row[TABLE_PROTOCOLS[p]] = {**figures, **{k: getattr(r, k) for k in keys[p]}}
        row.update(num_params=b.num_params, pretrained=b.pretrained, modality=b.modality)
        per[b.name] = row
    ds = results.dataset
    return {
        "command": "compare",
        "dataset": {"key": ds["key"], "name": ds["name"], "image_size": ds["image_size"]},
        "backbones": per,
        "strongest_linear": results.strongest_linear.protocol,
        "pretraining_gains": [g.to_dict() for g in results.pretraining_gains],
        "doubts": [d.to_dict() for d in results.doubts],
        "wall_time_s": results.wall_time_s,
    }


def _plain_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return list(ci) if ci is not None else None


def result_rows(results: CompareResults) -> list[ResultRow]:
    """One results-table row per (backbone, protocol) of a compare run (test top-1)."""
    dataset = dataset_entry(results.dataset)
    return [
        ResultRow(
            dataset=dataset,
            backbone=b.name,
            protocol=TABLE_PROTOCOLS[p],
            metric="top1",
            value=float(r.test_acc1),
            split="test",
            run=results.run,
            time=results.finished,
            extra={"pretrained": b.pretrained, "modality": b.modality, "num_params": b.num_params},
        )
        for b in results.backbones
        for p, r in b.protocols.items()
    ]
