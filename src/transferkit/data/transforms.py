"""Image transform presets for classification.

Every preset maps a PIL RGB image to a ``(3, image_size, image_size)`` float32 tensor with values in
``[0, 1]``. Normalisation is deliberately *not* done here: backbones normalise with their own mean/std
(see :mod:`transferkit.backbones.base`), so one data pipeline feeds any backbone.

Presets (``augment``):

- ``none``: resize the shorter side to ``image_size / crop_pct``, center crop ``image_size`` (also the eval
  transform);
- ``basic``: ``RandomResizedCrop(image_size, scale)`` + horizontal flip with probability ``hflip``;
- ``randaug``: timm's ImageNet training recipe (``RandomResizedCropAndInterpolation`` + flip + RandAugment
  from a timm config string such as ``rand-m9-mstd0.5-inc1``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode, v2

from transferkit.data.options import AUGMENTS, DEFAULT_RANDAUG
from transferkit.errors import UserError

Transform = Callable[..., torch.Tensor]


def _check_common(image_size: int, hflip: float, crop_pct: float, scale: tuple[float, float]) -> None:
    if int(image_size) < 1:
        raise UserError(f"data.image_size must be a positive number of pixels, got {image_size}")
    if not 0.0 <= hflip <= 1.0:
        raise UserError(f"data.hflip is a probability in [0, 1], got {hflip}")
    if not 0.0 < crop_pct <= 1.0:
        raise UserError(f"data.crop_pct must be in (0, 1] (1.0 = no border cropped at eval), got {crop_pct}")
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise UserError(f"data.crop_scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")


def build_eval_transform(
    image_size: int, crop_pct: float = 1.0, interpolation: str = "bilinear"
) -> v2.Compose:
    """Deterministic transform: PIL RGB image -> (3, image_size, image_size) float32 in [0, 1]."""
    resize = int(round(image_size / crop_pct))
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=InterpolationMode(interpolation), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def build_transform(
    image_size: int,
    train: bool = False,
    augment: str = "none",
    randaug: str = DEFAULT_RANDAUG,
    hflip: float = 0.5,
    crop_pct: float = 1.0,
    scale: tuple[float, float] = (0.08, 1.0),
    interpolation: str = "bilinear",
) -> Transform:
    """Build the transform of one split: PIL RGB image -> (3, image_size, image_size) float32 in [0, 1].

    Args:
        image_size: Output side length in pixels.
        train: Training transform (random augmentation per ``augment``) or the deterministic eval one.
        augment: ``none`` | ``basic`` | ``randaug`` (ignored when ``train`` is False).
        randaug: timm RandAugment config string, used by ``augment='randaug'``.
        hflip: Horizontal-flip probability for ``basic``/``randaug`` (0 for data where flips change
            meaning, e.g. digits or text).
        crop_pct: Eval center-crop fraction: resize the shorter side to ``image_size / crop_pct`` first
            (timm convention; 0.875 for ImageNet-style photos, 1.0 keeps the whole image).
        scale: Area range of the random resized crop for ``basic``/``randaug``.
        interpolation: Resize interpolation (``bilinear``, ``bicubic``, ``nearest``).
    """
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment preset '{augment}'; choose one of {list(AUGMENTS)}")
    try:
        InterpolationMode(interpolation)
    except ValueError:
        modes = [m.value for m in InterpolationMode]
        raise UserError(f"unknown interpolation '{interpolation}'; choose one of {modes}") from None
    _check_common(image_size, hflip, crop_pct, scale)
    if not train or augment == "none":
        return build_eval_transform(image_size, crop_pct, interpolation)
    if augment == "basic":
        return v2.Compose(
            [
                v2.RandomResizedCrop(
                    image_size,
                    scale=tuple(scale),
                    interpolation=InterpolationMode(interpolation),
                    antialias=True,
                ),
                v2.RandomHorizontalFlip(p=hflip),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
    from timm.data import create_transform

    # Output range: timm's training pipeline is PIL ops (crop, flip, RandAugment on uint8 images, which
    # saturate at 0/255), then MaybeToTensor (uint8 -> float / 255, i.e. [0, 1]) and Normalize(mean, std).
    # With mean=(0, 0, 0) and std=(1, 1, 1) Normalize is the identity, so values stay in [0, 1] (checked in
    # tests/data/test_transforms.py). Colour jitter is off because RandAugment is on (timm's rule), and
    # random erasing stays off (re_prob=0): its 'rand'/'pixel' modes fill with N(0, 1) noise, outside [0, 1].
    try:
        transform = create_transform(
            image_size,
            is_training=True,
            scale=tuple(scale),
            hflip=hflip,
            auto_augment=randaug,
            interpolation=interpolation,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            re_prob=0.0,
        )
    except (AssertionError, ValueError, KeyError) as e:  # timm validates config strings with assert
        raise UserError(
            f"invalid RandAugment config '{randaug}' ({e}); use timm's format, e.g. '{DEFAULT_RANDAUG}' "
            "(rand-m<magnitude>-n<ops>-mstd<std>)"
        ) from None
    _patch_posterize(transform)
    return transform


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's ``posterize`` op, also defined for ``bits_to_keep <= 0``: an all-black image.

    timm's "increasing" posterize keeps ``4 - int(4 * level / 10)`` bits, i.e. 0 bits at level 10, which
    ``rand-m9-mstd0.5`` reaches ~2% of the time. Older Pillow returned a black image for 0 bits (as the
    TF reference implementation does); current Pillow raises ``ValueError: bits must be between ... 1
    and 8``, which crashed about one image in a thousand with the default config (5 of 5000 measured).
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: object) -> None:
    """Swap the posterize function of timm's RandAugment / AugMix / AutoAugment ops for the total one."""
    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", [])) + [op for sub in getattr(t, "policy", []) for op in sub]
        for op in ops:
            if getattr(op, "name", "").startswith("Posterize") and hasattr(op, "aug_fn"):
                op.aug_fn = _posterize_any_bits


def describe_transform(transform: Transform) -> str:
    """A stable text description of a transform (its repr), used in fingerprints and reports."""
    return " ".join(repr(transform).split())
