"""Common image corruptions at 5 severities (ImageNet-C style), built from torchvision ``transforms.v2`` ops.

Every corruption maps a batch ``(B, 3, H, W)`` float in ``[0, 1]`` to the same shape and range. Parameters
follow Hendrycks & Dietterich 2019 (ImageNet-C) where they do not depend on the image size (noise sigma, JPEG
quality, contrast, pixelation factor); blur sigma is a fraction of the image side (ImageNet-C's 1-6 px at
224 px spans 0.5-2.7%; CIFAR-10-C's 0.4-1 px at 32 px spans 1.2-3%), so small images are blurred as visibly as
large ones. Random corruptions (noise) draw from a seeded generator: results are reproducible and independent
of the global RNG.

| name | torchvision op | severity 1 ... 5 |
|---|---|---|
| gaussian_noise | ``gaussian_noise`` (clipped) | sigma 0.08, 0.12, 0.18, 0.26, 0.38 |
| gaussian_blur | ``gaussian_blur`` | sigma 1%, 1.5%, 2%, 2.5%, 3% of the side |
| jpeg | ``jpeg`` | quality 25, 18, 15, 10, 7 |
| brightness | ``adjust_brightness`` | factor 1.5, 2.0, 2.5, 3.0, 3.5 |
| contrast | ``adjust_contrast`` | factor 0.4, 0.3, 0.2, 0.1, 0.05 |
| pixelate | ``resize`` down (antialiased) + nearest up | scale 0.6, 0.5, 0.4, 0.3, 0.25 |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from transferkit.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)

_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
_BLUR = (0.01, 0.015, 0.02, 0.025, 0.03)
_JPEG = (25, 18, 15, 10, 7)
_BRIGHTNESS = (1.5, 2.0, 2.5, 3.0, 3.5)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)


def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = _NOISE[severity - 1]
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    # TF.gaussian_noise draws from the global RNG; adding seeded noise keeps runs reproducible (same op)
    return (x + sigma * noise).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = _BLUR[severity - 1] * max(x.shape[-2:])
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def jpeg(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    as_uint8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    out = TF.jpeg(as_uint8, quality=_JPEG[severity - 1])
    return TF.to_dtype(out, torch.float32, scale=True).to(x.device)


def brightness(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return TF.adjust_brightness(x, _BRIGHTNESS[severity - 1])


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return TF.adjust_contrast(x, _CONTRAST[severity - 1])


def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = _PIXELATE[severity - 1]
    small = TF.resize(x, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)
    return TF.resize(small, [h, w], interpolation=InterpolationMode.NEAREST).clamp(0, 1)


Corruption = Callable[..., torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
}


def resolve_corruptions(names: str | Sequence[str] | None) -> list[str]:
    """``'all'`` / None -> every corruption; ``'none'`` / empty -> none; else the named ones (checked)."""
    if names is None or names == "all":
        return list(CORRUPTIONS)
    if names in ("none", ""):
        return []
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in items if n not in CORRUPTIONS]
    if unknown:
        raise UserError(
            f"unknown corruption(s) {unknown}; choose from {list(CORRUPTIONS)} (or 'all' / 'none')"
        )
    return items


def resolve_severities(severities: Sequence[int] | None) -> list[int]:
    values = sorted(set(int(s) for s in (severities or SEVERITIES)))
    bad = [s for s in values if s not in SEVERITIES]
    if bad:
        raise UserError(f"severities must be in {list(SEVERITIES)}, got {bad}")
    return values


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch (B, 3, H, W) in [0, 1]."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption '{name}'; choose from {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"severity must be one of {list(SEVERITIES)}, got {severity}")
    generator = torch.Generator().manual_seed(int(seed))
    return CORRUPTIONS[name](x, severity, generator=generator)


class RobustnessAccumulator:
    """Counts correct top-1 predictions per (corruption, severity) over batches.

    ``update(images, labels, predict)`` corrupts ``images`` (B, 3, H, W) in [0, 1] with every requested
    corruption/severity (noise seeded by ``seed``, the batch index, corruption and severity) and calls
    ``predict(images) -> logits (B, C)``; ``result()`` returns accuracies.
    """

    def __init__(self, corruptions: Sequence[str], severities: Sequence[int], seed: int = 0) -> None:
        self.corruptions = list(corruptions)
        self.severities = list(severities)
        self.seed = int(seed)
        self.correct = {(c, s): 0 for c in self.corruptions for s in self.severities}
        self.total = 0
        self._batch = 0

    @torch.no_grad()
    def update(
        self, images: torch.Tensor, labels: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        for ci, name in enumerate(self.corruptions):
            for s in self.severities:
                seed = self.seed + 1_000_003 * self._batch + 101 * ci + s
                x = corrupt(images, name, s, seed=seed)
                pred = predict(x).argmax(-1).to(labels.device)
                self.correct[(name, s)] += int((pred == labels).sum())
        self.total += int(labels.numel())
        self._batch += 1

    def result(self, clean_accuracy: float) -> dict:
        """``{'clean': acc, 'accuracy': {corruption: {severity: acc}}, 'mean_per_severity': {...},
        'mean_corrupted': acc, 'relative_robustness': mean_corrupted / clean}``."""
        if self.total == 0:
            raise UserError("no images were evaluated under corruption")
        acc = {
            c: {str(s): self.correct[(c, s)] / self.total for s in self.severities} for c in self.corruptions
        }
        per_sev = {
            str(s): sum(acc[c][str(s)] for c in self.corruptions) / len(self.corruptions)
            for s in self.severities
        }
        mean = sum(per_sev.values()) / len(per_sev) if per_sev else float("nan")
        return {
            "num_images": self.total,
            "clean": clean_accuracy,
            "accuracy": acc,
            "mean_per_severity": per_sev,
            "mean_corrupted": mean,
            "relative_robustness": mean / clean_accuracy if clean_accuracy > 0 else None,
        }
