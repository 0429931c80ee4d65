"""Probes on frozen backbones: feature extraction with an on-disk cache, a one-pass grid of linear heads and
weighted kNN (DINOv2's linear and kNN evaluations on cached features).

- :func:`get_features` (``cache.py``): run a backbone once over a split and cache the features;
- :func:`train_linear_grid` (``linear.py``): every (feature variant, learning rate) head trained together;
- :func:`knn_evaluate` (``knn.py``): cosine kNN with ``exp(sim / T)`` votes, several k from one search.
"""

from transferkit.probe.cache import FeatureSet, default_cache_dir, get_features, weights_digest
from transferkit.probe.knn import knn_evaluate, knn_neighbors, knn_scores
from transferkit.probe.linear import (
    LinearGridConfig,
    LinearGridResult,
    Variant,
    feature_variants,
    train_linear_grid,
)

__all__ = [
    "FeatureSet",
    "LinearGridConfig",
    "LinearGridResult",
    "Variant",
    "default_cache_dir",
    "feature_variants",
    "get_features",
    "knn_evaluate",
    "knn_neighbors",
    "knn_scores",
    "train_linear_grid",
    "weights_digest",
]
