"""The comparison runner: every backbone through the same frozen-feature protocols on one dataset.

For every backbone (built once, random-init parts seeded):

1. features of train/val/test are extracted once (or read from the cache, :mod:`transferkit.probe.cache`):
   the last ``max(probe.layers)`` blocks, every pooling the probes need;
2. linear probe: a grid of heads (poolings x last-k blocks x learning rates) trained together in one pass per
   epoch over the cached features (:mod:`transferkit.probe.linear`); the best head on val is reported on
   test;
3. kNN: weighted cosine kNN (k in 10/20/100/200, T = 0.07) on the final-layer features; k chosen on val,
   reported on test (:mod:`transferkit.probe.knn`);
4. optionally a short full fine-tune: ``transferkit fit`` of the classification task into
   ``<run>/finetune/<backbone>/``, reported at its best checkpoint on val, as every fit run is.

Then pretrained-vs-random-twin gains and fair pairs (:mod:`transferkit.compare.stats`), the report
(:mod:`transferkit.compare.report`), ``results.json`` (everything), ``metrics.json`` (the final numbers) and rows
of the results table (:mod:`transferkit.results`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.backbones import backbone_options, resolve_backbone
from transferkit.backbones.base import Backbone
from transferkit.compare.options import (
    DEFAULT_BACKBONES,
    FinetuneOptions,
    KnnOptions,
    ProbeOptions,
    parse_backbones,
)
from transferkit.compare.report import build_report, make_plots
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
) -> dict[str, Any]:
    """``transferkit fit`` of ``ImageClassifier(adaptation=finetune)`` on ``name`` into ``runs_dir/<slug>``.

    The same LightningCLI set-up as any fit run (run directory, checkpoints, ``best.ckpt`` chosen on val top-1,
    evaluated on val and test); returns the best checkpoint's numbers from the run's ``metrics.json``.
    """
    from transferkit.lightning_cli import run_fit

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
    data = {
        "class_path": "transferkit.data.ImageClassificationDataModule",
        "init_args": {**spec.init_args, "batch_size": opts.batch_size},
    }
    slug = name.replace("/", "_").replace(":", "_")
    start = time.perf_counter()
    cli = run_fit(model, data, epochs=opts.epochs, device=device, progress=progress, seed=seed, name=slug,
                  runs_dir=runs_dir, limit_train_batches=opts.limit_train_batches)  # fmt: skip
    seconds = time.perf_counter() - start
    run = RunDir(cli.run_dir)
    metrics = run.read_metrics()
    val, test = metrics["val"], metrics["test"]
    return {
        "val_acc1": val["acc1"],
        "test_acc1": test["acc1"],
        "test_acc5": test["acc5"],
        "per_class_acc": list(test["per_class_acc"].values()),
        "epochs": opts.epochs,
        "seconds": round(seconds, 2),
        "run_dir": str(run.path),
        "checkpoint": metrics.get("best_checkpoint"),
    }


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
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Features (cached), linear-probe grid and kNN for one backbone (and, with ``timed``, its throughput).

    Returns its results entry and the per-image test correctness ``{'linear': (N,) bool, 'knn': (N,) bool}``.
    ``options``: build options of the backbone (e.g. a language model's ``patch_size``).
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
    y_test = feats["test"].labels
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
    entry = {
        "name": name,
        "pretrained": bool(bb.pretrained),
        "family": bb.family,
        "modality": bb.modality,
        "num_params": int(bb.num_params()),
        "embed_dim": int(bb.embed_dim),
        "num_blocks": int(bb.num_blocks),
        "default_pooling": bb.pooling,
        "weights_digest": meta["weights_digest"],
        "features": {
            s: {
                "cache_hit": fs.metadata["cache_hit"],
                "path": str(fs.path),
                "throughput_img_s": fs.metadata["throughput_img_s"],
                "extract_seconds": fs.metadata["extract_seconds"],
                "num_images": fs.num_samples,
            }
            for s, fs in feats.items()
        },
        "throughput_img_s": speed["images_per_s"] if speed else None,
        "throughput": speed,
        "linear": {
            "val_acc1": grid.val["acc1"],
            "test_acc1": grid.test["acc1"],
            "test_acc5": grid.test["acc5"],
            "test_ci95": wilson_ci(int(correct["linear"].sum()), n_test),
            "per_class_acc": grid.test["per_class_acc"],
            "best_head": grid.best,
            "poolings": poolings,
            "layers": layers,
            "num_heads": len(grid.heads),
            "epochs": probe.epochs,
            "seconds": round(grid.seconds, 3),
            "grid": grid.heads,
        },
        "knn": {
            "pooling": knn_pooling,
            "temperature": knn.temperature,
            "best_k": knn_res["best_k"],
            "val_acc1": knn_res["val_acc1"],
            "test_acc1": knn_res["test_acc1"],
            "test_ci95": wilson_ci(int(correct["knn"].sum()), n_test),
            "acc1": {s: {str(k): v for k, v in d.items()} for s, d in knn_res["acc1"].items()},
            "per_class_acc": knn_res["per_class_acc"]["test"],
        },
        "logreg": (
            {
                "variant": grid.best["variant"],
                "c": logreg.c,
                "val_acc1": logreg.val["acc1"],
                "test_acc1": logreg.test["acc1"],
                "test_acc5": logreg.test["acc5"],
                "test_ci95": wilson_ci(int(correct["logreg"].sum()), n_test),
                "seconds": round(logreg.seconds, 3),
                "sweep": logreg.sweep,
            }
            if logreg is not None
            else None
        ),
        "finetune": None,
    }
    del bb, feats, knn_feats, variants
    gc.collect()
    return entry, correct


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
    on_backbone: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Compare ``backbones`` on the dataset ``spec`` describes, in the run directory ``run``.

    Writes ``results.json`` (everything), ``metrics.json`` (final numbers), ``report.md``/``report.html``,
    ``plots/`` and, with ``finetune``, a fit run per backbone under ``finetune/``; appends one row per
    (backbone, protocol) to ``results_table`` (None = don't). ``on_backbone(entry)`` is called after each
    backbone. With ``seeds`` > 1 the probe and kNN are repeated with seeds ``seed + 1`` ... (random-init weights,
    heads and batch order change; features of pretrained weights come from the cache) and every entry gets
    ``seeds``: mean, spread and values per protocol; the tests and tables of one run use ``seed``. Returns the
    dict written to ``results.json``.
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
    entries = []
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
            entry["seeds"] = {
                "seeds": list(range(seed, seed + seeds)),
                **{
                    protocol: seed_summary([e[protocol]["test_acc1"] for e in (entry, *more)])
                    for protocol in ("linear", "knn")
                },
            }
        if finetune is not None:
            entry["finetune"] = finetune_backbone(
                name,
                spec,
                finetune,
                run.path / "finetune",
                language=entry["modality"] == "language",
                patch_size=options[name].get("patch_size"),
                seed=seed,
                device=device,
                progress=extract.progress,
            )
        entries.append(entry)
        if on_backbone is not None:
            on_backbone(entry)

    results: dict[str, Any] = {
        "run": run.name,
        "dataset": dataset,
        "protocol": {
            "probe": {**asdict(probe), "precision": resolve_precision(probe.precision, device)},
            "knn": asdict(knn),
            "finetune": asdict(finetune) if finetune is not None else None,
            "seed": seed,
            "seeds": seeds,
            "fair_max_ratio": fair_max_ratio,
            "device": device,
            "precision": resolve_precision(extract.precision, device),
            "storage": extract.storage,
            "selection": "best on val, reported on test",
        },
        "backbones": entries,
        "pretraining_gains": pretraining_gains(entries, correct),
        "pairwise": pairwise_tests(entries, correct),
        "fair_pairs": fair_pairs(entries, fair_max_ratio) if with_fair_pairs else [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_time_s": round(time.time() - started, 2),
        "torch": torch.__version__,
    }
    plots = make_plots(results, run.path / "plots")
    results["plots"] = {k: str(p.relative_to(run.path)) for k, p in plots.items()}
    atomic_write_json(run.path / "results.json", results)
    run.update_metrics(final_metrics(results))
    build_report(results, plots).write(run.path)
    if results_table is not None:
        results_table.append(result_rows(results))
        results["results_table"] = str(results_table.path)
    return results


def final_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` of a compare run: test top-1 (and CI) per backbone and protocol, the gains."""
    per = {}
    for e in results["backbones"]:
        row: dict[str, Any] = {
            "linear_probe": {k: e["linear"][k] for k in ("val_acc1", "test_acc1", "test_acc5", "test_ci95")},
            "knn": {k: e["knn"][k] for k in ("val_acc1", "test_acc1", "test_ci95", "best_k")},
            **(
                {
                    "logistic_regression": {
                        k: e["logreg"][k] for k in ("val_acc1", "test_acc1", "test_ci95", "c")
                    }
                }
                if e.get("logreg")
                else {}
            ),  # fmt: skip
            "num_params": e["num_params"],
            "pretrained": e["pretrained"],
            "modality": e["modality"],
        }
        if e.get("finetune"):
            row["finetune"] = {k: e["finetune"][k] for k in ("val_acc1", "test_acc1", "test_acc5", "run_dir")}
        per[e["name"]] = row
    ds = results["dataset"]
    return {
        "command": "compare",
        "dataset": {"key": ds["key"], "name": ds["name"], "image_size": ds["image_size"]},
        "backbones": per,
        "pretraining_gains": results["pretraining_gains"],
        "wall_time_s": results["wall_time_s"],
    }


def result_rows(results: dict[str, Any]) -> list[ResultRow]:
    """One results-table row per (backbone, protocol) of a compare run (test top-1)."""
    dataset = dataset_entry(results["dataset"])
    rows = []
    for e in results["backbones"]:
        values = {"linear_probe": e["linear"]["test_acc1"], "knn": e["knn"]["test_acc1"]}
        if e.get("logreg"):
            values["logistic_regression"] = e["logreg"]["test_acc1"]
        if e.get("finetune"):
            values["finetune"] = e["finetune"]["test_acc1"]
        for protocol, value in values.items():
            rows.append(
                ResultRow(
                    dataset=dataset,
                    backbone=e["name"],
                    protocol=protocol,
                    metric="top1",
                    value=float(value),
                    split="test",
                    run=results["run"],
                    time=results["finished"],
                    extra={
                        "pretrained": e["pretrained"],
                        "modality": e["modality"],
                        "num_params": e["num_params"],
                    },
                )
            )
    return rows
