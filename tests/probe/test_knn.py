"""Weighted kNN agrees with scikit-learn's KNeighborsClassifier on the same features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from transferkit.errors import UserError
from transferkit.probe.knn import knn_evaluate, knn_neighbors, knn_scores

T = 0.07


@pytest.fixture(scope="module")
def digits_features():
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) + np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32)  # no ties
    return x[:1000], y[:1000], x[1000:1400], y[1000:1400]


@pytest.mark.parametrize("k", [10, 20, 100, 200])
def test_predictions_and_neighbours_match_sklearn(digits_features, k):
    xtr, ytr, xte, _ = digits_features
    sk = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1.0 - d) / T)
    ).fit(xtr, ytr)
    ours = knn_scores(xtr, ytr, xte, 10, ks=[k], temperature=T, chunk_size=128)[k].argmax(1).numpy()
    np.testing.assert_array_equal(ours, sk.predict(xte))

    dist, idx = sk.kneighbors(xte)
    sims, our_idx = knn_neighbors(xtr, xte, k, chunk_size=128)
    assert all(set(a) == set(b) for a, b in zip(idx, our_idx.numpy()))
    np.testing.assert_allclose(sims.numpy(), 1.0 - dist, atol=1e-5)


def test_evaluate_picks_k_on_val_and_reports_test(digits_features):
    xtr, ytr, xte, yte = digits_features
    res = knn_evaluate(
        xtr, ytr, {"val": (xte[:200], yte[:200]), "test": (xte[200:], yte[200:])}, 10, ks=(1, 10, 5000)
    )
    assert res["ks"] == [1, 10, 1000]  # k above the training-set size is clipped to it
    best = res["best_k"]
    assert res["acc1"]["val"][best] == max(res["acc1"]["val"].values())
    assert res["test_acc1"] == res["acc1"]["test"][best]
    assert res["test_acc1"] > 0.9  # digits pixels are a strong kNN baseline
    assert len(res["per_class_acc"]["test"]) == 10


def test_bad_arguments():
    x = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(UserError, match="temperature"):
        knn_scores(x, np.zeros(5), x, 2, temperature=0)
    with pytest.raises(UserError, match="4-d"):
        knn_neighbors(x, np.ones((2, 4), dtype=np.float32), 1)


def test_chunked_search_over_the_train_rows_gives_the_same_neighbours_and_predictions(digits_features):
    xtr, ytr, xte, _ = digits_features
    whole = knn_scores(xtr, ytr, xte, 10, ks=[10, 100], temperature=T, chunk_size=128)
    # 1000 x 64 float32 rows in blocks of ~17 rows (0.004 MiB): 59 merges per query chunk
    chunked = knn_scores(xtr, ytr, xte, 10, ks=[10, 100], temperature=T, chunk_size=128, train_chunk_mb=0.004)
    for k in (10, 100):
        np.testing.assert_array_equal(chunked[k].argmax(1).numpy(), whole[k].argmax(1).numpy())
        np.testing.assert_allclose(chunked[k].numpy(), whole[k].numpy(), rtol=1e-5, atol=1e-6)
    s1, i1 = knn_neighbors(xtr, xte, 30)
    s2, i2 = knn_neighbors(xtr, xte, 30, train_chunk_mb=0.004)
    np.testing.assert_array_equal(i1.numpy(), i2.numpy())
    np.testing.assert_allclose(s1.numpy(), s2.numpy(), rtol=1e-6, atol=1e-6)
