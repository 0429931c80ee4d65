"""Probes on frozen backbones: feature extraction with an on-disk cache, a one-pass grid of linear heads and
weighted kNN (DINOv2's linear and kNN evaluations on cached features).

- :func:`get_features` (``cache.py``): run a backbone once over a split and cache the features;
- :func:`train_linear_grid` (``linear.py``): every (feature variant, learning rate) head trained together;
- :func:`train_logistic_regression` (``linear.py``): L-BFGS logistic regression with a C sweep chosen on val;
- :func:`knn_evaluate` (``knn.py``): cosine kNN with ``exp(sim / T)`` votes, several k from one search.
"""

from transferkit.utils.lazy import lazy_exports

#: public names and their modules, imported on first use (``transferkit.probe.options`` stays torch-free)
_LAZY = {
    **{n: "cache" for n in ("FeatureSet", "default_cache_dir", "get_features", "weights_digest")},
    **{n: "options" for n in ("ExtractOptions", "LogRegConfig")},
    **{n: "knn" for n in ("knn_evaluate", "knn_neighbors", "knn_scores")},
    **{
        n: "linear"
        for n in (
            "LinearGridConfig",
            "LinearGridResult",
            "LogRegResult",
            "Variant",
            "feature_variants",
            "train_linear_grid",
            "train_logistic_regression",
        )
    },  # fmt: skip
}

__getattr__ = lazy_exports(__name__, _LAZY)


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
