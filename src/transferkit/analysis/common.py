"""Shared pieces of the analyses: image samples, the reference (starting) backbone, block modules, outputs.

Every analysis writes ``<run>/analysis/<what>/`` (PNGs + ``<what>.json``) and its section of the run's
``report.md``/``report.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.errors import UserError
from transferkit.report import Report
from transferkit.runs import LoadedRun
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def output_dir(run: LoadedRun, what: str) -> Path:
    out = run.path / "analysis" / what
    out.mkdir(parents=True, exist_ok=True)
    return out


def sample_indices(labels: list[int], max_images: int | None, seed: int = 0) -> np.ndarray:
    """Up to ``max_images`` indices, stratified by class (every class gets its share), sorted."""
    n = len(labels)
    if max_images is None or max_images >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    classes = np.unique(labels_np)
    per_class = max(1, max_images // len(classes))
    picked: list[int] = []
    for c in classes:
        idx = np.flatnonzero(labels_np == c)
        picked.extend(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist())
    rest = np.setdiff1d(np.arange(n), picked)
    if len(picked) < max_images and len(rest):
        picked.extend(rng.choice(rest, size=min(max_images - len(picked), len(rest)), replace=False).tolist())
    return np.sort(np.asarray(picked[:max_images]))


def load_images(
    run: LoadedRun, split: str, max_images: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-stratified sample of ``split`` with the eval transform: images (N, 3, S, S) in [0, 1], labels (N,)."""
    ds = run.datamodule.dataset(split)
    idx = sample_indices(ds.targets, max_images, seed)
    items = [ds[int(i)] for i in idx]
    items = [it for it in items if it is not None]
    if not items:
        raise UserError(f"the {split} split has no readable images")
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def batched(fn, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """``fn`` over ``x`` in batches, results concatenated on dim 0."""
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def reference_backbone(run: LoadedRun, reference: str | None) -> tuple[Backbone | None, str]:
    """The backbone to compare the run's trained one with, and a description.

    ``reference`` None: the run's starting point rebuilt from its config, exactly: its pretrained weights and its
    random-init parts (a language model's PatchEmbed, a random twin) drawn under the config's ``seed`` as the run
    drew them. A ``.ckpt`` path: the backbone of that classification checkpoint. Anything else: a backbone name
    or directory (``build_backbone``, pretrained).
    """
    from transferkit.backbones import BackboneConfig, build_backbone, build_backbone_from_config

    image_size = int(run.model.hparams.get("image_size") or run.datamodule.image_size)
    if reference is None:
        trained = run.hparams.get("backbone")  # as trained: the loaded model was rebuilt without downloads
        cfg = BackboneConfig(**dict(trained)) if isinstance(trained, dict) else run.model.backbone_cfg
        if not isinstance(cfg, BackboneConfig):
            cfg = BackboneConfig(**dict(cfg))
        bb = build_backbone_from_config(cfg, image_size=image_size)
        how = "pretrained" if bb.pretrained else "random init"
        return bb.eval(), f"starting point: {cfg.name} ({how}, seed {cfg.seed}), rebuilt as the run built it"
    path = Path(reference).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise UserError(f"reference checkpoint '{reference}' does not exist")
        other = type(run.model).load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
        return other.backbone.eval(), f"checkpoint {path}"
    return build_backbone(reference, True, image_size=image_size).eval(), f"backbone {reference}"


def canonical_name(name: str) -> str:
    """Parameter name without peft's LoRA wrapping (``.base_layer``), to match the un-adapted backbone."""
    return name.replace(".base_layer.", ".")


def first_tensor(output: Any) -> torch.Tensor | None:
    """The hidden-state tensor of a block's output (HF blocks return tuples)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return None


def finish(
    run: LoadedRun, what: str, data: dict[str, Any], files: dict[str, Path], section: str
) -> dict[str, Any]:
    """Write ``<what>.json`` (numbers + relative file paths) and the report section; returns the JSON dict."""
    out = output_dir(run, what)
    data = {"run": run.name, "checkpoint": str(run.checkpoint), "analysis": what, **data}
    data["files"] = {k: str(Path(v).relative_to(run.path)) for k, v in files.items()}
    atomic_write_json(out / f"{what}.json", data)
    run.run.update_metrics({"analysis": {what: _numbers(data)}})
    report = Report(f"Run `{run.name}`")
    sec = report.section(f"analysis-{what}", f"Analysis: {what}")
    sec.add_text(f"JSON: `analysis/{what}/{what}.json`.").add_text(section)
    for k in files:
        sec.add_image(files[k], k)
    report.write(run.path)
    log.info("wrote %s", out / f"{what}.json")
    return data


def _numbers(data: dict[str, Any], depth: int = 2) -> dict[str, Any]:
    """The numeric leaves of an analysis result (nested dicts up to ``depth``), for ``metrics.json``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, bool) or k in ("files", "run", "checkpoint", "analysis"):
            continue
        if isinstance(v, int | float):
            out[k] = v
        elif isinstance(v, dict) and depth > 1:
            inner = _numbers(v, depth - 1)
            if inner:
                out[k] = inner
    return out


def summary(what: str, data: dict[str, Any]) -> str:
    """One line of an analysis result, for the terminal."""
    if what == "features":
        t = data["trained"]
        s = f"linear separability {t['linear_separability']:.4f}, kNN {t['knn_accuracy']:.4f}, silhouette {t['silhouette']:.4f}"
        if "reference_separability" in data:
            r = data["reference_separability"]
            s += f" (reference: {r['linear_separability']:.4f}, {r['knn_accuracy']:.4f}, {r['silhouette']:.4f})"
        return s
    if what == "weights":
        ch = data["mean_relative_change"]
        return f"{data['num_matrices']} matrices; mean relative change " + (
            "n/a (" + data["reference"] + ")" if ch is None else f"{ch:.4f}"
        )
    if what == "activations":
        sel = [b.get("class_selectivity") or 0.0 for b in data["blocks"]]
        return (
            f"{len(data['blocks'])} blocks; class selectivity first/last block {sel[0]:.3f} / {sel[-1]:.3f}"
        )
    if what == "attention":
        d = [sum(b["mean_distance"]) / len(b["mean_distance"]) for b in data["blocks"]]
        return f"{data['num_blocks']} blocks x {data['num_heads']} heads; mean attention distance first/last block {d[0]:.1f} / {d[-1]:.1f} px"
    s = f"loss at the trained weights {data['center_loss']:.4f} (accuracy {data['center_accuracy']:.4f})"
    if "loss_increase_at_0.5" in data:
        s += f"; loss increase at |a|=0.5: {data['loss_increase_at_0.5']:.4f}"
    return s
