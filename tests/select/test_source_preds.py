import numpy as np
import pytest
import timm
import torch

from transferkit.backbones import build_backbone
from transferkit.errors import UserError
from transferkit.select.scores import leep, nce
from transferkit.select.source_preds import (
    gmm_pseudo_source,
    load_timm_source_head,
    source_predictions,
    timm_source_head,
)


@pytest.mark.parametrize(
    "arch,kwargs,size",
    [
        ("test_vit", {}, 64),  # ViT, class-token pooling
        ("test_vit", {"global_pool": "avg"}, 64),  # ViT, mean pooling + fc_norm
        ("test_resnet", {}, 64),  # CNN, global average pooling
    ],
)
def test_timm_head_on_cached_pooled_features_equals_the_full_model(arch, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=7, **kwargs).eval()
    x = torch.rand(5, 3, size, size)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
        tokens = model.forward_features(x)
    head = timm_source_head(model, tokens.ndim)
    assert head is not None and head.num_classes == 7
    if tokens.ndim == 3:
        pooled = tokens[:, 0] if head.pooling == "cls" else tokens[:, model.num_prefix_tokens :].mean(1)
    else:
        assert head.pooling == "mean"
        pooled = tokens.flatten(2).mean(2)
    np.testing.assert_allclose(head(pooled.numpy()), expected, atol=1e-5)


def test_no_head_for_headless_or_random_models():
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    assert timm_source_head(model, 3) is None
    bb = build_backbone("vit-micro", image_size=32)  # random init: its head would be meaningless
    assert load_timm_source_head(bb) is None


def test_gmm_pseudo_source_is_deterministic_and_informative():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    separable = rng.normal(size=(3, 20))[y] * 5 + rng.normal(size=(300, 20))
    a = gmm_pseudo_source(separable, y, seed=1)
    b = gmm_pseudo_source(separable, y, seed=1)
    np.testing.assert_array_equal(a.probs, b.probs)
    assert a.probs.shape == (300, 15) and a.kind == "gmm"
    np.testing.assert_allclose(a.probs.sum(1), 1.0, atol=1e-9)
    assert 1 <= a.details["pca_dims"] <= 20
    noise = rng.normal(size=(300, 20))
    r = gmm_pseudo_source(noise, y, seed=1)
    assert nce(a.labels, y) > nce(r.labels, y)
    assert leep(a.probs, y) > leep(r.probs, y)
    full = source_predictions(separable, y, covariance="full", components_per_class=2)
    assert full.details["covariance"] == "full" and full.num_source_classes == 6


def test_gmm_bad_options():
    x = np.random.default_rng(0).normal(size=(20, 4))
    y = np.arange(20) % 2
    with pytest.raises(UserError, match="covariance"):
        gmm_pseudo_source(x, y, covariance="banana")
    with pytest.raises(UserError, match="variance"):
        gmm_pseudo_source(x, y, variance=1.5)
    with pytest.raises(UserError, match="constant"):
        gmm_pseudo_source(np.ones((20, 4)), y)
