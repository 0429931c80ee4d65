"""Separability numbers on features whose answer is known."""

from __future__ import annotations

import numpy as np

from transferkit.analysis.features import embed_2d, separability


def test_separable_features_score_high_and_shuffled_labels_score_at_chance():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 40)
    centers = rng.normal(size=(4, 16)) * 4
    x = centers[y] + rng.normal(size=(len(y), 16))
    good = separability(x, y)
    assert good["linear_separability"] > 0.95 and good["knn_accuracy"] > 0.95 and good["silhouette"] > 0.3
    bad = separability(x, rng.permutation(y))
    assert bad["linear_separability"] < 0.45 and bad["silhouette"] < 0.05
    assert len(good["pca_explained_variance"]) == 10
    emb = embed_2d(x)
    assert emb["pca"].shape == (160, 2) and emb["tsne"].shape == (160, 2)
