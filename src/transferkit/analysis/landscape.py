"""Loss landscape around the trained weights along filter-normalised random directions (Li et al. 2018).

For the perturbed parameters theta (default: those the run trained), draw Gaussian directions d (and e for
2-D) and rescale each filter (row along dim 0) of each tensor to the norm of the same filter of theta; 1-D
tensors (biases, norms) get no perturbation, Li et al.'s default. The loss and accuracy of
``theta + a d (+ b e)`` are evaluated on a fixed class-stratified sample of a split (default: train, the
loss the run minimised), with ``torch.func.functional_call`` so the model's weights are never modified.
When only the head is perturbed (a linear probe), the frozen backbone's features are computed once.

Outputs: ``landscape_1d.png`` (loss and accuracy along a), ``landscape_2d.png`` (contours over a, b) and the
grids with summary numbers: ``center_loss`` and the mean loss increase at ``|a| = 0.5`` and ``|a| = 1`` (a
flatness measure comparable across runs of the same model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from transferkit.analysis.common import finish, load_images, model_device, output_dir
from transferkit.errors import UserError
from transferkit.report.plots import new_figure, save_figure
from transferkit.runs import LoadedRun

SCOPES = ("trainable", "all", "head", "backbone")


def filter_normalized_direction(
    params: dict[str, torch.Tensor], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A random direction with each filter's norm equal to the parameter's filter norm (zeros for 1-D)."""
    out = {}
    for name, w in params.items():
        if w.ndim <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device, w.dtype)
        w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
        d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
        scale = (w_norm / (d_norm + 1e-10)).view(-1, *([1] * (w.ndim - 1)))
        out[name] = d * scale
    return out


def select_params(model: torch.nn.Module, scope: str) -> dict[str, torch.Tensor]:
    if scope not in SCOPES:
        raise UserError(f"unknown scope '{scope}'; choose one of {list(SCOPES)}")
    named = dict(model.named_parameters())
    if scope == "trainable":
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif scope == "all":
        chosen = named
    else:
        chosen = {n: p for n, p in named.items() if n.startswith(f"{scope}.")}
    chosen = {n: p.detach() for n, p in chosen.items()}
    if not any(p.ndim > 1 for p in chosen.values()):
        raise UserError(f"scope '{scope}' selects no weight matrix to perturb")
    return chosen


@torch.no_grad()
def analyze_landscape(
    run: LoadedRun,
    *,
    split: str = "train",
    max_images: int | None = 256,
    points: int = 21,
    grid: int = 11,
    span: float = 1.0,
    scope: str = "trainable",
    dims: str = "both",
    seed: int = 0,
) -> dict[str, Any]:
    """1-D and/or 2-D loss landscape of ``run`` (see the module docstring)."""
    if dims not in ("1", "2", "both"):
        raise UserError(f"dims must be 1, 2 or both, got '{dims}'")
    if points < 3 or grid < 3 or span <= 0:
        raise UserError("points and grid must be >= 3 and span > 0")
    model = run.model.eval()
    device = model_device(model)
    images, labels = load_images(run, split, max_images, seed)
    images, labels = images.to(device), labels.to(device)
    params = select_params(model, scope)
    head_only = all(n.startswith("head.") for n in params)
    gen = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(params, gen)
    d2 = filter_normalized_direction(params, gen)
    if head_only:
        target = model.head
        inputs = torch.cat([model.backbone(images[i : i + 128]).float() for i in range(0, len(images), 128)])
        local = {n.removeprefix("head."): p for n, p in params.items()}
        d1 = {n.removeprefix("head."): v for n, v in d1.items()}
        d2 = {n.removeprefix("head."): v for n, v in d2.items()}
    else:
        target, inputs, local = model, images, params

    def evaluate(a: float, b: float) -> tuple[float, float]:
        perturbed = {n: p + a * d1[n] + b * d2[n] for n, p in local.items()}
        logits = torch.cat(
            [functional_call(target, perturbed, (inputs[i : i + 128],)) for i in range(0, len(inputs), 128)]
        )
        return float(F.cross_entropy(logits.float(), labels)), float(
            (logits.argmax(-1) == labels).float().mean()
        )

    center_loss, center_acc = evaluate(0.0, 0.0)
    data: dict[str, Any] = {
        "split": split,
        "num_images": int(len(labels)),
        "scope": scope,
        "perturbed_tensors": len(local),
        "perturbed_params": int(sum(p.numel() for p in local.values() if p.ndim > 1)),
        "features_cached": head_only,
        "center_loss": center_loss,
        "center_accuracy": center_acc,
    }
    out = output_dir(run, "landscape")
    files = {}
    if dims in ("1", "both"):
        alphas = np.linspace(-span, span, points)
        res = [evaluate(float(a), 0.0) for a in alphas]
        losses, accs = [r[0] for r in res], [r[1] for r in res]
        data["one_d"] = {"alpha": alphas.tolist(), "loss": losses, "accuracy": accs}
        for r in (0.5, 1.0):
            if r <= span:
                vals = [np.interp(s * r, alphas, losses) for s in (-1, 1)]
                data[f"loss_increase_at_{r}"] = float(np.mean(vals) - center_loss)
        files["landscape_1d"] = _plot_1d(alphas, losses, accs, out / "landscape_1d.png", run.name)
    if dims in ("2", "both"):
        coords = np.linspace(-span, span, grid)
        surface = np.array([[evaluate(float(a), float(b))[0] for a in coords] for b in coords])
        data["two_d"] = {"alpha": coords.tolist(), "beta": coords.tolist(), "loss": surface.tolist()}
        files["landscape_2d"] = _plot_2d(coords, surface, out / "landscape_2d.png", run.name)
    section = (
        f"Filter-normalised random directions over {data['perturbed_tensors']} tensors "
        f"({data['perturbed_params']:,} weights, scope `{scope}`), {data['num_images']} {split} images. "
        f"Loss at the trained weights {center_loss:.4f} (accuracy {center_acc:.4f})"
        + (
            f"; mean loss increase at |a| = 0.5: {data['loss_increase_at_0.5']:.4f}"
            if "loss_increase_at_0.5" in data
            else ""
        )
        + (f", at |a| = 1: {data['loss_increase_at_1.0']:.4f}" if "loss_increase_at_1.0" in data else "")
        + "."
    )
    return finish(run, "landscape", data, files, section)


def _plot_1d(alphas, losses, accs, path, name) -> Any:
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(alphas, losses, color="#c44e52", marker="o", markersize=3, label="loss")
    ax.set_xlabel("a (filter-normalised direction)")
    ax.set_ylabel("cross-entropy", color="#c44e52")
    ax2 = ax.twinx()
    ax2.plot(alphas, accs, color="#4c72b0", marker="s", markersize=3, label="accuracy")
    ax2.set_ylabel("accuracy", color="#4c72b0")
    ax2.set_ylim(0, 1.02)
    ax.set_title(f"{name}: 1-D loss landscape")
    return save_figure(fig, path)


def _plot_2d(coords, surface, path, name) -> Any:
    fig = new_figure(5.5, 4.6)
    ax = fig.add_subplot()
    lo = float(surface.min())
    # clip the colour range at 5x the median rise so a flat basin stays visible next to exploding corners
    hi = max(lo + 1e-6, min(float(surface.max()), lo + 5 * (float(np.median(surface)) - lo)))
    levels = np.linspace(lo, hi, 20)
    cs = ax.contourf(coords, coords, surface, levels=levels, cmap="viridis", extend="max")
    ax.contour(coords, coords, surface, levels=levels, colors="white", linewidths=0.4)
    ax.plot([0], [0], marker="*", color="red", markersize=10)
    fig.colorbar(cs, ax=ax, label="cross-entropy")
    ax.set_xlabel("a")
    ax.set_ylabel("b")
    ax.set_title(f"{name}: 2-D loss landscape")
    return save_figure(fig, path)
