import numpy as np
import pytest

from transferkit.errors import UserError
from transferkit.select.scores import leep, nce
from transferkit.select.source_preds import gmm_pseudo_source, source_predictions


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
