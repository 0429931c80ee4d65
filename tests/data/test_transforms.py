import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data.transforms import build_transform, describe_transform
from transferkit.errors import UserError


def _image(h: int = 20, w: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_transform_resizes_crops_and_scales():
    image = _image()
    t = build_transform(16, train=False)
    x = t(image)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, t(image))  # deterministic
    # 'none' augmentation at train time is the eval transform
    assert torch.equal(build_transform(16, train=True, augment="none")(image), x)
    # crop_pct < 1 resizes to 16 / 0.8 = 20 first, then crops the center
    assert "Resize(size=[20]" in describe_transform(build_transform(16, crop_pct=0.8))


def test_eval_transform_keeps_values_of_same_size_image():
    arr = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x = build_transform(16)(Image.fromarray(arr))
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_basic_augment_flip_probability():
    image = _image(32, 32)
    flip = build_transform(16, train=True, augment="basic", hflip=1.0)
    no_flip = build_transform(16, train=True, augment="basic", hflip=0.0)
    torch.manual_seed(0)
    a = flip(image)
    torch.manual_seed(0)
    b = no_flip(image)
    assert a.shape == (3, 16, 16) and torch.equal(a, b.flip(-1))
    torch.manual_seed(1)
    assert not torch.equal(no_flip(image), b)  # random crops differ between draws


def test_randaug_output_stays_in_unit_range():
    t = build_transform(24, train=True, augment="randaug", randaug="rand-m15-n3-mstd0.5-inc1")
    torch.manual_seed(0)
    outs = torch.stack([t(_image(seed=i)) for i in range(48)])
    assert outs.shape == (48, 3, 24, 24) and outs.dtype == torch.float32
    assert outs.min() >= 0.0 and outs.max() <= 1.0
    assert outs.min() == 0.0 and outs.max() > 0.99  # real [0, 1] range, not normalised by ImageNet stats


def test_randaug_posterize_zero_bits_is_black_not_an_error():
    # level 10 (reached by rand-m9-mstd0.5 ~2% of the time) keeps 0 bits; Pillow rejects bits=0
    t = build_transform(16, train=True, augment="randaug", randaug="rand-m10-inc1")
    ra = next(s for s in t.transforms if hasattr(s, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    assert op.level_fn(10.0, op.hparams) == (0,)
    out = op.aug_fn(_image(), *op.level_fn(10.0, op.hparams))
    assert out.size == (30, 20) and np.asarray(out).max() == 0
    assert np.array_equal(np.asarray(op.aug_fn(_image(), 2)), np.asarray(_image()) & 0b11000000)


def test_bad_transform_options():
    with pytest.raises(UserError, match="unknown augment preset 'mixup'"):
        build_transform(16, train=True, augment="mixup")
    with pytest.raises(UserError, match="invalid RandAugment config 'rand-m9-zz2'"):
        build_transform(16, train=True, augment="randaug", randaug="rand-m9-zz2")
    with pytest.raises(UserError, match="hflip"):
        build_transform(16, train=True, augment="basic", hflip=2.0)
    with pytest.raises(UserError, match="crop_pct"):
        build_transform(16, crop_pct=0.0)
    with pytest.raises(UserError, match="interpolation"):
        build_transform(16, interpolation="cubicle")
