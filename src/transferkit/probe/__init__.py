"""Probes on frozen backbones: feature extraction with an on-disk cache, a one-pass grid of linear heads and
weighted kNN (DINOv2's linear and kNN evaluations on cached features).

- :func:`get_features` (``cache.py``): run a backbone once over a split and cache the features;
- :func:`train_linear_grid` (``linear.py``): every (feature variant, learning rate) head trained together;
- :func:`train_logistic_regression` (``linear.py``): L-BFGS logistic regression with a C sweep chosen on val;
- :func:`knn_evaluate` (``knn.py``): cosine kNN with ``exp(sim / T)`` votes, several k from one search.
"""

from transferkit.probe.cache import (
    ExtractOptions,
    FeatureSet,
    default_cache_dir,
    get_features,
    weights_digest,
)
from transferkit.probe.knn import knn_evaluate, knn_neighbors, knn_scores
from transferkit.probe.linear import (
    LinearGridConfig,
    LinearGridResult,
    LogRegConfig,
    LogRegResult,
    Variant,
    feature_variants,
    train_linear_grid,
    train_logistic_regression,
)

__all__ = [
    "ExtractOptions",
    "FeatureSet",
    "LinearGridConfig",
    "LinearGridResult",
    "LogRegConfig",
    "LogRegResult",
    "Variant",
    "default_cache_dir",
    "feature_variants",
    "get_features",
    "knn_evaluate",
    "knn_neighbors",
    "knn_scores",
    "train_linear_grid",
    "train_logistic_regression",
    "weights_digest",
]
