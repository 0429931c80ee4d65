"""Source-class predictions ``p(z | x)`` on target images, the input of LEEP and NCE.

LEEP and NCE score a *classifier*: how well its own label space ``Z`` (e.g. the 1,000 ImageNet classes)
predicts the target labels. Two ways to get ``p(z | x)``:

``head``
    The backbone's pretrained classification head, applied to its cached pooled features: timm models whose
    pretrained checkpoint carries a classifier (``resnet50``, ``vit_small_patch16_224.augreg_in21k``...).
    The backbone itself is built headless (``num_classes=0``); :meth:`Backbone.source_head` builds the same
    timm model *with* its head and applies the head to the cached features (no second pass over the images).
``gmm`` (fallback for feature-only models: self-supervised encoders, CLIP/SigLIP towers, language models
used as image encoders, random-init twins)
    Pseudo source classes as in N-LEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): features are
    projected by PCA onto the components explaining ``variance`` (80%) of their variance, a Gaussian
    mixture with ``components_per_class x C_t`` (5 x) components is fitted on them, and its posteriors
    ``p(component | x)`` are the source-class probabilities. NCE uses their argmax (hard cluster labels), as
    in the pseudo-label variants of NCE. Two choices of ours, for speed at 10k x 1k features: the PCA keeps at
    most ``max_dim`` (64) components, and the mixture has diagonal covariances by default
    (``covariance='full'`` is N-LEEP's exact setting). The PCA reuses the eigendecomposition the
    feature-based scores already computed.

CLIP/SigLIP zero-shot heads would need the text tower and a source vocabulary; the vision towers transferkit
builds have neither, so they use the ``gmm`` fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import UserError
from transferkit.select.scores import as_features, check_labels

log = logging.getLogger(__name__)

COVARIANCES = ("diag", "full", "spherical", "tied")


@dataclass
class SourcePredictions:
    """``probs`` ``(N, C_s)`` source-class probabilities (rows sum to 1); ``kind`` ``head`` or ``gmm``."""

    probs: np.ndarray
    kind: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` hard source labels (argmax), the input of NCE."""
        return self.probs.argmax(axis=1)

    @property
    def num_source_classes(self) -> int:
        return int(self.probs.shape[1])


def gmm_pseudo_source(
    features: Any,
    labels: Any,
    *,
    components_per_class: int = 5,
    variance: float = 0.8,
    max_dim: int | None = 64,
    covariance: str = "diag",
    max_iter: int = 100,
    seed: int = 0,
) -> SourcePredictions:
    """N-LEEP pseudo source classes: PCA (``variance`` explained, at most ``max_dim`` dims) then a Gaussian
    mixture with ``components_per_class * C_t`` components; returns its posteriors ``(N, K)``.

    ``features`` ``(N, D)`` (or a :class:`~transferkit.select.scores.Features`); ``labels`` ``(N,)`` only set
    the number of components. Deterministic for a given ``seed``.
    """
    from sklearn.mixture import GaussianMixture

    if covariance not in COVARIANCES:
        raise UserError(f"unknown covariance '{covariance}'; choose one of {list(COVARIANCES)}")
    if not 0 < variance <= 1:
        raise UserError(f"variance must be in (0, 1], got {variance}")
    if components_per_class < 1:
        raise UserError(f"components_per_class must be >= 1, got {components_per_class}")
    feats = as_features(features)
    _, c = check_labels(labels, feats.n)
    xc, w, v = feats.centered_spectrum()
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    if w.sum() <= 0:
        raise UserError("features are constant; no pseudo source classes can be fitted")
    dims = int(np.searchsorted(np.cumsum(w) / w.sum(), variance) + 1)
    dims = max(1, min(dims, len(w), max_dim or len(w)))
    z = xc @ v[:, :dims]
    k = min(components_per_class * c, feats.n)
    gmm = GaussianMixture(
        n_components=k, covariance_type=covariance, max_iter=max_iter, random_state=seed, reg_covar=1e-6
    )
    from threadpoolctl import threadpool_limits

    # one BLAS thread: EM's products are skinny ((K x N) @ (N x d)); measured on 2 shared cores, OpenBLAS's
    # threads made a 10k x 64, 50-component fit 10x slower (0.6 s per M-step instead of ~0.05 s)
    with threadpool_limits(limits=1, user_api="blas"):
        gmm.fit(z)
        probs = gmm.predict_proba(z)
    return SourcePredictions(
        probs,
        "gmm",
        {"components": k, "pca_dims": dims, "covariance": covariance, "converged": bool(gmm.converged_)},
    )


def source_predictions(
    features: Any,
    labels: Any,
    *,
    head: Any = None,
    head_features: Any = None,
    **gmm_options: Any,
) -> SourcePredictions:
    """``p(z | x)`` for LEEP/NCE: the ``head`` applied to ``head_features`` (the pooled features it expects,
    default ``features``) when given, else :func:`gmm_pseudo_source` on ``features``."""
    if head is not None:
        pooled = features if head_features is None else head_features
        probs = head(pooled.x if hasattr(pooled, "x") else pooled)
        return SourcePredictions(
            probs, "head", {"source_classes": int(probs.shape[1]), "pooling": head.pooling}
        )
    return gmm_pseudo_source(features, labels, **gmm_options)
