"""Fair comparison of backbones on one dataset: the same data, the same frozen-feature protocols, one report.

For every backbone (built once, random-init parts seeded):

1. features of train/val/test are extracted once (or read from the cache, :mod:`transferkit.probe.cache`):
   the last ``max(probe.layers)`` blocks, every pooling the probes need;
2. linear probe: a grid of heads (poolings x last-k blocks x learning rates) trained together in one pass per
   epoch over the cached features (:mod:`transferkit.probe.linear`); the best head on val is reported on
   test;
3. kNN: weighted cosine kNN (k in 10/20/100/200, T = 0.07) on the final-layer features; k chosen on val,
   reported on test (:mod:`transferkit.probe.knn`);
4. optionally a short full fine-tune with the classification task (Lightning), reported on test.

Then: pretrained-vs-random-twin gains (``X`` vs ``X:random``), "fair pairs" (each backbone matched with the
closest-size backbone of every other modality, with the size gap), plots, ``results.json``, ``report.md`` /
``report.html``, and rows appended to the shared performance table (:func:`append_performance`).
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.backbones.base import Backbone
from transferkit.backbones.registry import split_random_suffix
from transferkit.errors import UserError
from transferkit.probe.cache import default_device, get_features, modality, resolve_backbone
from transferkit.probe.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, knn_evaluate
from transferkit.probe.linear import (
    DEFAULT_LEARNING_RATES,
    LinearGridConfig,
    feature_variants,
    train_linear_grid,
)
from transferkit.report import Report, Table, heatmap, params_m, percent, scatter
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)

PERFORMANCE_SCHEMA = 1
DEFAULT_BACKBONES = ("minilm-l6", "minilm-l6:random", "vit-tiny:random")


# ---------------------------------------------------------------------------------------------- options
@dataclass
class ProbeOptions:
    """Linear-probe grid on cached features (DINOv2-style, see ``transferkit.probe.linear``).

    Args:
        epochs: passes over the cached training features.
        batch_size: mini-batch size (LRs are scaled by ``batch_size / 256``).
        learning_rates: base learning-rate grid.
        poolings: poolings to probe; None = the backbone's default pooling and ``mean``.
        layers: numbers of last blocks whose pooled features are concatenated (1 = the final block); values
            above a backbone's depth are capped.
        weight_decay: L2 weight decay of the heads.
        normalize: standardise features with the training mean/std (BN(affine=False)-style).
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rates: list[float] = field(default_factory=lambda: list(DEFAULT_LEARNING_RATES))
    poolings: list[str] | None = None
    layers: list[int] = field(default_factory=lambda: [1, 4])
    weight_decay: float = 0.0
    normalize: bool = True


@dataclass
class KnnOptions:
    """Weighted kNN on final-layer features (DINO/DINOv2 protocol).

    Args:
        ks: numbers of neighbours; the best on val is reported on test.
        temperature: votes are ``exp(cosine similarity / temperature)``.
        pooling: pooling of the kNN features; None = the backbone's default.
    """

    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    temperature: float = DEFAULT_TEMPERATURE
    pooling: str | None = None


@dataclass
class FinetuneOptions:
    """Short full fine-tune per backbone with ``transferkit.tasks.ImageClassifier`` (used with ``--finetune``).

    Args:
        epochs: training epochs.
        batch_size: training batch size.
        blr: base learning rate (AdamW; LR = blr * batch / 256).
        weight_decay: AdamW weight decay.
        layer_decay: layer-wise LR decay.
        warmup_epochs: linear warmup (fractions allowed).
        label_smoothing: label smoothing.
        patch_embed_lr_mult: LR multiplier of a language model's new PatchEmbed.
        limit_train_batches: Lightning's limit per epoch (int batches or float fraction); None = all.
    """

    epochs: int = 3
    batch_size: int = 32
    blr: float = 4e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.1
    patch_embed_lr_mult: float = 10.0
    limit_train_batches: int | float | None = None


# ---------------------------------------------------------------------------------------------- helpers
def parse_backbones(value: str | Sequence[str]) -> list[str]:
    """``'a,b , c'`` or ``['a', 'b,c']`` -> ``['a', 'b', 'c']`` (duplicates removed, order kept)."""
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if not names:
        raise UserError(
            "no backbones to compare: pass e.g. --backbones minilm-l6,minilm-l6:random,vit-tiny:random"
        )
    return list(dict.fromkeys(names))


def dataset_identity(datamodule: Any) -> dict[str, Any]:
    """Name and fingerprint of a dataset (the hash of its train/val/test fingerprints)."""
    fps = {s: datamodule.fingerprint(s) for s in ("train", "val", "test")}
    digest = hashlib.blake2b(json.dumps(fps, sort_keys=True).encode(), digest_size=16).hexdigest()
    source = getattr(datamodule, "source_name", "data")
    path = getattr(getattr(datamodule, "data_source", None), "path", None)
    name = source if path is None else f"{source}:{Path(str(path)).name}"
    return {"name": name, "fingerprint": digest, "splits": fps}


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


def wilson_ci(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``correct / total`` (scipy)."""
    from scipy.stats import binomtest

    if total <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (two-sided binomial test on the discordant pairs) of two classifiers evaluated on the
    same images: the probability of a difference at least this large if both were equally accurate."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def fair_pairs(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each backbone matched with the closest-size backbone (|log param ratio|) of every other modality.

    Rows: ``backbone``, ``modality``, ``params``, ``partner``, ``partner_modality``, ``partner_params``,
    ``size_ratio`` (larger / smaller), ``size_gap`` ((params - partner) / partner) and the partner's
    linear-probe and kNN test top-1 minus the backbone's (``linear_delta``, ``knn_delta``).
    """
    rows = []
    mods = sorted({e["modality"] for e in entries})
    for e in entries:
        for m in mods:
            if m == e["modality"]:
                continue
            others = [o for o in entries if o["modality"] == m]
            o = min(others, key=lambda o: (abs(math.log(o["num_params"] / e["num_params"])), o["name"]))
            rows.append(
                {
                    "backbone": e["name"],
                    "modality": e["modality"],
                    "params": e["num_params"],
                    "partner": o["name"],
                    "partner_modality": m,
                    "partner_params": o["num_params"],
                    "size_ratio": max(e["num_params"], o["num_params"])
                    / min(e["num_params"], o["num_params"]),
                    "size_gap": (e["num_params"] - o["num_params"]) / o["num_params"],
                    "linear_delta": e["linear"]["test_acc1"] - o["linear"]["test_acc1"],
                    "knn_delta": e["knn"]["test_acc1"] - o["knn"]["test_acc1"],
                }
            )
    return rows


def pretraining_gains(
    entries: Sequence[dict[str, Any]], correct: dict[str, dict[str, np.ndarray]] | None = None
) -> list[dict[str, Any]]:
    """``X`` vs its random twin ``X:random`` when both were compared: test top-1 differences and, given the
    per-image test correctness ``correct[name][protocol]``, exact McNemar p-values (``linear_p``, ``knn_p``)."""
    by_name = {e["name"]: e for e in entries}
    rows = []
    for e in entries:
        base, is_random = split_random_suffix(e["name"])
        if is_random or not e["pretrained"]:
            continue
        twin = by_name.get(f"{base}:random")
        if twin is None:
            continue
        row = {
            "backbone": e["name"],
            "random_twin": twin["name"],
            "linear_pretrained": e["linear"]["test_acc1"],
            "linear_random": twin["linear"]["test_acc1"],
            "linear_gain": e["linear"]["test_acc1"] - twin["linear"]["test_acc1"],
            "knn_pretrained": e["knn"]["test_acc1"],
            "knn_random": twin["knn"]["test_acc1"],
            "knn_gain": e["knn"]["test_acc1"] - twin["knn"]["test_acc1"],
        }
        if correct and e["name"] in correct and twin["name"] in correct:
            for protocol in ("linear", "knn"):
                row[f"{protocol}_p"] = mcnemar_p(
                    correct[e["name"]][protocol], correct[twin["name"]][protocol]
                )
        if e.get("finetune") and twin.get("finetune"):
            row["finetune_gain"] = e["finetune"]["test_acc1"] - twin["finetune"]["test_acc1"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- performance table
def append_performance(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Append ``rows`` to the shared performance table (JSON, see docs/compare.md for the schema).

    Concurrent writers are serialised with an exclusive ``fcntl`` lock on ``<path>.lock``; the file itself is
    replaced atomically, so readers never see a partial table.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = read_performance(path)
            table["rows"].extend(rows)
            atomic_write_json(path, table)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def read_performance(path: str | Path) -> dict[str, Any]:
    """The performance table at ``path`` (``{"schema": 1, "rows": [...]}``; empty when missing)."""
    path = Path(path)
    if not path.is_file():
        return {"schema": PERFORMANCE_SCHEMA, "rows": []}
    try:
        table = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"the performance table {path} is not valid JSON ({e}); fix or remove it") from None
    if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
        raise UserError(f"{path} is not a transferkit performance table (expected {{'schema', 'rows'}})")
    return table


def performance_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (backbone, metric) of a compare run, in the performance-table schema."""
    ds = results["dataset"]
    dataset = {
        "name": ds["name"],
        "fingerprint": ds["fingerprint"],
        "num_classes": ds["num_classes"],
        "num_train": ds["counts"]["train"],
        "image_size": ds["image_size"],
    }
    rows = []
    for e in results["backbones"]:
        metrics = {"linear_top1": e["linear"]["test_acc1"], "knn_top1": e["knn"]["test_acc1"]}
        if e.get("finetune"):
            metrics["finetune_top1"] = e["finetune"]["test_acc1"]
        for metric, value in metrics.items():
            rows.append(
                {
                    "dataset": dataset,
                    "backbone": e["name"],
                    "pretrained": e["pretrained"],
                    "modality": e["modality"],
                    "num_params": e["num_params"],
                    "metric": metric,
                    "split": "test",
                    "value": value,
                    "run": results["run"],
                    "time": results["finished"],
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- fine-tune
def finetune_backbone(
    name: str,
    data_kwargs: dict[str, Any],
    opts: FinetuneOptions,
    out_dir: Path,
    *,
    language: bool,
    patch_size: int | None,
    seed: int,
    device: str,
    progress: bool,
) -> dict[str, Any]:
    """Full fine-tune of ``name`` with the classification task and Lightning; final weights on val and test."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from transferkit.backbones.registry import BackboneConfig
    from transferkit.data import ImageClassificationDataModule
    from transferkit.tasks.classification import ImageClassifier, RegularizationOptions
    from transferkit.tasks.optim import OptimConfig

    L.seed_everything(seed, workers=True, verbose=False)
    dm = ImageClassificationDataModule(**{**data_kwargs, "batch_size": opts.batch_size})
    model = ImageClassifier(
        backbone=BackboneConfig(name=name, patch_size=patch_size),
        adaptation="finetune",
        optimizer=OptimConfig(
            name="adamw",
            blr=opts.blr,
            weight_decay=opts.weight_decay,
            layer_decay=opts.layer_decay,
            warmup_epochs=opts.warmup_epochs,
            lr_mult={"patch_embed": opts.patch_embed_lr_mult} if language else {},
        ),
        regularization=RegularizationOptions(label_smoothing=opts.label_smoothing),
    )
    trainer = L.Trainer(
        max_epochs=opts.epochs,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        logger=CSVLogger(str(out_dir), name="log"),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        limit_train_batches=opts.limit_train_batches,
        default_root_dir=str(out_dir),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - start
    val, test = model.final_metrics["val"], model.final_metrics["test"]
    return {
        "val_acc1": val["acc1"],
        "test_acc1": test["acc1"],
        "test_acc5": test["acc5"],
        "per_class_acc": list(test["per_class_acc"].values()),
        "epochs": opts.epochs,
        "seconds": round(seconds, 2),
        "log_dir": str(out_dir / "log"),
    }


# ---------------------------------------------------------------------------------------------- runner
def compare_backbone(
    name: str,
    datamodule: Any,
    *,
    probe: ProbeOptions,
    knn: KnnOptions,
    cache_dir: str | Path | None,
    batch_size: int | None,
    device: str,
    seed: int,
    patch_size: int | None,
    refresh_cache: bool,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Features (cached), linear-probe grid and kNN for one backbone.

    Returns its results entry and the per-image test correctness ``{'linear': (N,) bool, 'knn': (N,) bool}``.
    """
    options = {"patch_size": patch_size} if patch_size is not None else {}
    bb = resolve_backbone(name, datamodule.image_size, seed=seed, **options)
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
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=device,
            refresh=refresh_cache,
            progress=progress,
        )
    meta = feats["train"].metadata
    variants = feature_variants(feats["train"], feats["val"], feats["test"], poolings=poolings, layers=layers)
    labels = {s: fs.label_tensor() for s, fs in feats.items()}
    grid_cfg = LinearGridConfig(
        learning_rates=tuple(probe.learning_rates),
        epochs=probe.epochs,
        batch_size=probe.batch_size,
        weight_decay=probe.weight_decay,
        normalize=probe.normalize,
        seed=seed,
    )
    grid = train_linear_grid(variants, labels, datamodule.num_classes, grid_cfg, device=device)
    knn_feats = {s: fs.view(knn_pooling, None) for s, fs in feats.items()}
    knn_res = knn_evaluate(
        knn_feats["train"].features,
        knn_feats["train"].labels,
        {s: (knn_feats[s].features, knn_feats[s].labels) for s in ("val", "test")},
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
    n_test = len(y_test)
    throughput = [fs.metadata["throughput_img_s"] for fs in feats.values() if not fs.metadata["cache_hit"]]
    entry = {
        "name": name,
        "pretrained": bool(bb.pretrained),
        "family": bb.family,
        "modality": modality(bb),
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
        # images/s of this run's extraction (train split first); the cached figure when every split was a hit
        "throughput_img_s": throughput[0] if throughput else meta["throughput_img_s"],
        "throughput_cached": not throughput,
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
        "finetune": None,
    }
    del bb, feats, knn_feats, variants
    gc.collect()
    return entry, correct


def run_compare(
    datamodule: Any,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    *,
    run_dir: str | Path,
    probe: ProbeOptions | None = None,
    knn: KnnOptions | None = None,
    finetune: FinetuneOptions | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    seed: int = 0,
    patch_size: int | None = None,
    with_fair_pairs: bool = True,
    performance_table: str | Path | None = None,
    refresh_cache: bool = False,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    on_backbone: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Compare ``backbones`` on ``datamodule``; write ``results.json``, plots and the report to ``run_dir``.

    ``finetune`` (None = skip) adds a short Lightning fine-tune per backbone. ``performance_table`` (None =
    don't) is the shared table the run appends to. ``on_backbone(entry)`` is called after each backbone.
    Returns the results dict written to ``results.json``.
    """
    probe = probe or ProbeOptions()
    knn = knn or KnnOptions()
    device = device or default_device()
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    names = parse_backbones(backbones)
    started = time.time()
    datamodule.setup("fit")
    desc = datamodule.describe()
    identity = dataset_identity(datamodule)
    entries = []
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        log.info("comparing %s on %s", name, identity["name"])
        entry, correct[name] = compare_backbone(
            name,
            datamodule,
            probe=probe,
            knn=knn,
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=device,
            seed=seed,
            patch_size=patch_size,
            refresh_cache=refresh_cache,
            progress=progress,
        )
        if finetune is not None:
            entry["finetune"] = finetune_backbone(
                name,
                dict(datamodule.hparams),
                finetune,
                run_dir / "finetune" / name.replace("/", "_").replace(":", "_"),
                language=entry["family"] == "language",
                patch_size=patch_size,
                seed=seed,
                device=device,
                progress=progress,
            )
        entries.append(entry)
        if on_backbone is not None:
            on_backbone(entry)

    results: dict[str, Any] = {
        "run": run_dir.name,
        "dataset": {
            **identity,
            "source": desc["source"],
            "path": desc["path"],
            "image_size": desc["image_size"],
            "num_classes": desc["num_classes"],
            "class_names": desc["class_names"],
            "counts": {s: d["count"] for s, d in desc["splits"].items()},
            "test_is_val": desc["test_is_val"],
        },
        "protocol": {
            "probe": asdict(probe),
            "knn": asdict(knn),
            "finetune": asdict(finetune) if finetune is not None else None,
            "seed": seed,
            "device": device,
            "selection": "best on val, reported on test",
        },
        "backbones": entries,
        "pretraining_gains": pretraining_gains(entries, correct),
        "fair_pairs": fair_pairs(entries) if with_fair_pairs else [],
        "config": config or {},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_time_s": round(time.time() - started, 2),
        "torch": torch.__version__,
    }
    plots = make_plots(results, run_dir / "plots")
    results["plots"] = {k: str(p.relative_to(run_dir)) for k, p in plots.items()}
    atomic_write_json(run_dir / "results.json", results)
    report = build_report(results, plots, run_dir)
    report.write(run_dir)
    if performance_table is not None:
        append_performance(performance_table, performance_rows(results))
        results["performance_table"] = str(performance_table)
    return results


# ---------------------------------------------------------------------------------------------- report
def results_table(results: dict[str, Any]) -> Table:
    """The main table: one row per backbone (accuracies as % top-1 on test)."""
    entries = results["backbones"]
    with_ft = any(e.get("finetune") for e in entries)
    columns = [
        "backbone",
        "modality",
        "pretrained",
        "params",
        "embed dim",
        "images/s",
        "linear top-1",
        "linear 95% CI",
        "kNN top-1",
    ]
    if with_ft:
        columns.append("fine-tune top-1")
    columns += ["best linear head", "best k"]
    rows = []
    for e in entries:
        head = e["linear"]["best_head"]
        row = {
            "backbone": e["name"],
            "modality": e["modality"],
            "pretrained": "yes" if e["pretrained"] else "no",
            "params": e["num_params"],
            "embed dim": e["embed_dim"],
            "images/s": e["throughput_img_s"],
            "linear top-1": e["linear"]["test_acc1"],
            "linear 95% CI": e["linear"].get("test_ci95"),
            "kNN top-1": e["knn"]["test_acc1"],
            "fine-tune top-1": e["finetune"]["test_acc1"] if e.get("finetune") else None,
            "best linear head": f"{head['variant']}, lr {head['lr']:g}",
            "best k": e["knn"]["best_k"],
        }
        rows.append(row)
    ds = results["dataset"]
    return Table(
        columns,
        rows,
        title=f"Backbones on {ds['name']} (test top-1 %, {ds['counts']['test']} images)",
        formats={
            "params": params_m,
            "images/s": ",.0f",
            "linear top-1": percent,
            "linear 95% CI": lambda ci: f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}",
            "kNN top-1": percent,
            "fine-tune top-1": percent,
        },
    )


def gains_table(results: dict[str, Any]) -> Table:
    rows = results["pretraining_gains"]
    cols = [
        "backbone",
        "random twin",
        "linear (pretrained)",
        "linear (random)",
        "linear gain",
        "linear p",
        "kNN gain",
        "kNN p",
    ]
    return Table(
        cols,
        [
            {
                "backbone": r["backbone"],
                "random twin": r["random_twin"],
                "linear (pretrained)": r["linear_pretrained"],
                "linear (random)": r["linear_random"],
                "linear gain": r["linear_gain"],
                "linear p": r.get("linear_p"),
                "kNN gain": r["knn_gain"],
                "kNN p": r.get("knn_p"),
            }
            for r in rows
        ],
        title="Pretrained vs random-init twin (test top-1 %, gain in points, exact McNemar p)",
        formats={
            "linear p": ".3g",
            "kNN p": ".3g",
            "linear (pretrained)": percent,
            "linear (random)": percent,
            "linear gain": lambda v: f"{100 * v:+.2f}",
            "kNN gain": lambda v: f"{100 * v:+.2f}",
        },
    )


def pairs_table(results: dict[str, Any]) -> Table:
    return Table(
        [
            "backbone",
            "params",
            "closest other-modality backbone",
            "its params",
            "size ratio",
            "linear delta",
            "kNN delta",
        ],
        [
            {
                "backbone": f"{r['backbone']} ({r['modality']})",
                "params": r["params"],
                "closest other-modality backbone": f"{r['partner']} ({r['partner_modality']})",
                "its params": r["partner_params"],
                "size ratio": r["size_ratio"],
                "linear delta": r["linear_delta"],
                "kNN delta": r["knn_delta"],
            }
            for r in results["fair_pairs"]
        ],
        title="Fair pairs: closest-size backbone of another modality (delta = backbone minus partner, points)",
        formats={
            "params": params_m,
            "its params": params_m,
            "size ratio": lambda v: f"{v:.2f}x",
            "linear delta": lambda v: f"{100 * v:+.2f}",
            "kNN delta": lambda v: f"{100 * v:+.2f}",
        },
    )


def knn_table(results: dict[str, Any]) -> Table:
    ks = sorted({int(k) for e in results["backbones"] for k in e["knn"]["acc1"]["val"]})
    rows = []
    for e in results["backbones"]:
        for split in ("val", "test"):
            accs = e["knn"]["acc1"][split]
            rows.append([e["name"], split, *[accs.get(str(k)) for k in ks]])
    cols = ["backbone", "split", *[f"k={k}" for k in ks]]
    return Table(
        cols,
        rows,
        title=f"kNN top-1 % by k (T = {results['protocol']['knn']['temperature']})",
        formats={c: percent for c in cols[2:]},
    )


def grid_table(results: dict[str, Any]) -> Table:
    """Per backbone and feature variant: the best LR and its val top-1."""
    rows = []
    for e in results["backbones"]:
        best_by_variant: dict[str, dict] = {}
        for h in e["linear"]["grid"]:
            cur = best_by_variant.get(h["variant"])
            if cur is None or h["val_acc1"] > cur["val_acc1"]:
                best_by_variant[h["variant"]] = h
        for v, h in best_by_variant.items():
            chosen = "yes" if h["name"] == e["linear"]["best_head"]["name"] else ""
            rows.append([e["name"], v, h["lr"], h["val_acc1"], chosen])
    return Table(
        ["backbone", "variant (pooling/blocks)", "best lr", "val top-1", "chosen"],
        rows,
        title="Linear-probe grid: best learning rate per feature variant (val top-1 %)",
        formats={"best lr": "g", "val top-1": percent},
    )


def make_plots(results: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    entries = results["backbones"]
    names = [e["name"] for e in entries]
    groups = [e["modality"] for e in entries]
    lin = [100 * e["linear"]["test_acc1"] for e in entries]
    ci = [(100 * e["linear"]["test_ci95"][0], 100 * e["linear"]["test_ci95"][1]) for e in entries]
    plots = {
        "acc_vs_params": scatter(
            [e["num_params"] / 1e6 for e in entries],
            lin,
            names,
            plot_dir / "acc_vs_params.png",
            xlabel="parameters (M)",
            ylabel="linear-probe test top-1 (%, 95% CI)",
            title="Accuracy vs parameters",
            groups=groups,
            intervals=ci,
            logx=True,
        ),
        "acc_vs_throughput": scatter(
            [e["throughput_img_s"] for e in entries],
            lin,
            names,
            plot_dir / "acc_vs_throughput.png",
            xlabel="feature extraction (images/s)",
            ylabel="linear-probe test top-1 (%, 95% CI)",
            title="Accuracy vs throughput",
            groups=groups,
            intervals=ci,
            logx=True,
        ),
        "per_class": heatmap(
            np.array([e["linear"]["per_class_acc"] for e in entries], dtype=float),
            names,
            results["dataset"]["class_names"],
            plot_dir / "per_class_accuracy.png",
            title="Per-class test accuracy of the best linear probe",
            xlabel="class",
            cbar_label="accuracy",
        ),
    }
    return plots


def _headline(results: dict[str, Any]) -> str:
    lines = []

    def verdict(gain: float, p: float | None) -> str:
        if p is None:
            return f"{100 * gain:+.2f} points"
        if p >= 0.05:
            return f"{100 * gain:+.2f} points, not significant (McNemar p = {p:.2g})"
        return f"{100 * gain:+.2f} points, pretraining {'helps' if gain > 0 else 'hurts'} (p = {p:.2g})"

    for g in results["pretraining_gains"]:
        lines.append(
            f"- **{g['backbone']}** vs its random-init twin: linear probe {percent(g['linear_pretrained'])}% vs "
            f"{percent(g['linear_random'])}% ({verdict(g['linear_gain'], g.get('linear_p'))}); kNN "
            f"{percent(g['knn_pretrained'])}% vs {percent(g['knn_random'])}% "
            f"({verdict(g['knn_gain'], g.get('knn_p'))})."
        )
    best = max(results["backbones"], key=lambda e: e["linear"]["test_acc1"])
    lines.append(
        f"- Best linear probe: **{best['name']}** ({percent(best['linear']['test_acc1'])}% test top-1, "
        f"{params_m(best['num_params'])} parameters)."
    )
    return "\n".join(lines)


def build_report(results: dict[str, Any], plots: dict[str, Path], run_dir: Path) -> Report:
    ds = results["dataset"]
    proto = results["protocol"]
    counts = ds["counts"]
    report = Report(
        f"Backbone comparison on {ds['name']}",
        meta=(
            f"{ds['num_classes']} classes, {counts['train']}/{counts['val']}/{counts['test']} train/val/test "
            f"images at {ds['image_size']}px; device {proto['device']}; seed {proto['seed']}; "
            f"dataset fingerprint {ds['fingerprint'][:12]}; {results['finished']}"
        ),
    )
    report.add_section("Summary")
    report.add_text(_headline(results))
    if ds.get("test_is_val"):
        report.add_text(
            "**Note:** this dataset has no separate test split; test numbers are on the val split."
        )
    report.add_table(results_table(results), key="results")
    if results["pretraining_gains"]:
        report.add_table(gains_table(results), key="gains")
    if results["fair_pairs"]:
        report.add_table(pairs_table(results), key="fair_pairs")
    report.add_section("Plots")
    report.add_image(plots["acc_vs_params"], "Linear-probe accuracy vs parameter count")
    report.add_image(plots["acc_vs_throughput"], "Linear-probe accuracy vs feature-extraction throughput")
    report.add_image(plots["per_class"], "Per-class test accuracy of each backbone's best linear probe")
    report.add_section("Details")
    report.add_table(grid_table(results), key="grid")
    report.add_table(knn_table(results), key="knn")
    probe, knn = proto["probe"], proto["knn"]
    method = [
        "Every backbone is frozen; its features are extracted once per split (no augmentation, eval transform) "
        "and cached on disk.",
        f"**Linear probe**: {len(probe['learning_rates'])} learning rates x poolings x last-k blocks "
        f"({', '.join(str(k) for k in probe['layers'])}) trained together for {probe['epochs']} epochs (SGD, "
        f"momentum 0.9, cosine schedule, batch {probe['batch_size']}, LR scaled by batch/256, features "
        "standardised with train statistics); the head with the best val top-1 is reported on test.",
        f"**kNN**: cosine similarity on L2-normalised final-layer features, votes exp(sim/{knn['temperature']}), "
        f"k in {knn['ks']}; k chosen on val, reported on test.",
        "**Throughput**: images/s of the extraction pass (batched, inference mode, data loading included, "
        "steady state after the first batch); figures read from the cache are marked in results.json.",
    ]
    if proto.get("finetune"):
        ft = proto["finetune"]
        method.append(
            f"**Fine-tune**: the classification task (Lightning), {ft['epochs']} epochs, AdamW blr {ft['blr']:g}, "
            f"layer decay {ft['layer_decay']}, label smoothing {ft['label_smoothing']}; final weights on test."
        )
    report.add_section("Protocol")
    report.add_text("\n".join(f"- {m}" for m in method))
    return report
