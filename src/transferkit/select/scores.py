"""Training-free transferability scores on frozen features.

Every score takes target-set features ``(N, D)`` (or source-model predictions) and target labels ``(N,)`` and
returns one float; **higher means more transferable** for all of them. Definitions follow the papers and the
authors' reference code (named in each docstring); where the code is vectorised differently from the
reference, the docstring says why the result is the same.

| name | inputs | reference |
|---|---|---|
| ``logme`` | features, labels / multi-label / regression targets | You et al., ICML 2021; JMLR 2022 (fixed point) |
| ``leep`` | source-class probabilities, labels | Nguyen et al., ICML 2020 |
| ``nce`` | source-class hard labels, labels | Tran et al., ICCV 2019 |
| ``hscore`` | features, labels | Bao et al., ICIP 2019 |
| ``hscore_shrinkage`` | features, labels | Ibrahim et al., ICLR 2023 (Ledoit-Wolf regularised H-score) |
| ``knn`` | features, labels | leave-one-out weighted kNN accuracy (Wu et al. 2018 / DINO protocol) |
| ``sfda`` | features, labels | Shao et al., ECCV 2022 (self-challenging Fisher discriminant analysis) |

Labels may be any integers; they are mapped to ``0..C-1`` in sorted order first (an absent class id changes
nothing). Bad inputs (NaN/inf features, a single class, mismatched lengths, wrong shapes) raise
:class:`~transferkit.errors.UserError` naming the problem.

Linear algebra runs in float64. Symmetric eigendecompositions go through :func:`sym_eigh` (LAPACK via torch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from transferkit.errors import UserError
from transferkit.utils.devices import intra_op_threads

log = logging.getLogger(__name__)

LOGME_TASKS = ("classification", "multilabel", "regression")


# ---------------------------------------------------------------------------------------------- checks
def check_features(features: Any, name: str = "features") -> np.ndarray:
    """``features`` as a float64 ``(N, D)`` array; raises :class:`UserError` on a wrong shape or NaN/inf."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (N samples, D dims), got shape {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise UserError(f"{name} need at least 2 samples and 1 dimension, got shape {tuple(arr.shape)}")
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise UserError(
            f"{name} contain NaN or infinite values in {len(bad)} of {len(arr)} rows (first: row {bad[0]}); "
            "check the backbone's output (e.g. float16 overflow: extract in float32) or drop those samples"
        )
    return arr


def check_labels(labels: Any, n: int, what: str = "features", min_classes: int = 2) -> tuple[np.ndarray, int]:
    """Class labels ``(N,)`` mapped to ``0..C-1`` (sorted order) and ``C``.

    Raises :class:`UserError` when the length differs from ``n`` (the rows of ``what``), the labels are not
    integers, or there are fewer than ``min_classes`` classes.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"labels must be a 1-D array of class ids, got shape {tuple(y.shape)}")
    if len(y) != n:
        raise UserError(
            f"{what} have {n} rows but labels have {len(y)}; they must describe the same samples, in order"
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise UserError(
                "labels must be integer class ids; for continuous targets use logme(task='regression')"
            )
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"labels must be integer class ids, got dtype {y.dtype}")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < min_classes:
        raise UserError(
            f"labels contain {len(classes)} class{'es' if len(classes) != 1 else ''} "
            f"({classes.tolist()}); transferability scores need at least {min_classes} classes"
        )
    return y.astype(np.int64), len(classes)


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((len(y), c), dtype=np.float64)
    out[np.arange(len(y)), y] = 1.0
    return out


# Measured on 2 shared cores: MKL's multi-threaded syevd on a 1024x1024 float64 matrix took 9-32 s when the cores
# were busy (threads spin-wait on each other) and 0.65 s single-threaded; on a quiet machine the threaded version
# is at best ~1.3x faster. Eigendecompositions therefore run on one thread.
def sym_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric float64 matrix."""
    with intra_op_threads(1):
        w, v = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)))
    return w.numpy(), v.numpy()


def _gram(a: np.ndarray) -> np.ndarray:
    """``a.T @ a`` (numpy dispatches a transposed self-product to BLAS syrk: half the flops of a matmul)."""
    return a.T @ a


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through torch (MKL). Measured on 2 busy cores: numpy/OpenBLAS took 0.7 s for a skinny
    (10 x 10k) @ (10k x 1k) product that MKL does in 0.06 s (OpenBLAS threads spin-wait on shared cores)."""
    return (torch.from_numpy(np.asarray(a)) @ torch.from_numpy(np.asarray(b))).numpy()


def _class_sums(f: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    """``(C, D)`` per-class sums of the rows of ``f`` (``index_add``: one pass, no one-hot matrix)."""
    out = torch.zeros(c, f.shape[1], dtype=torch.float64)
    return out.index_add_(0, torch.from_numpy(y), torch.from_numpy(np.ascontiguousarray(f))).numpy()


class Features:
    """Validated float64 ``(N, D)`` features plus the spectral decompositions several scores share, computed
    once on first use (:func:`compute_scores` passes one instance to every score).

    Every decomposition is of the smaller Gram matrix (``D x D`` when ``N > D``, ``N x N`` otherwise), in
    float64. Eigenvalues below :meth:`rank_tol` are the numerical null space and count as exactly zero.
    """

    def __init__(self, features: Any):
        self.x = check_features(features)
        self.n, self.d = self.x.shape
        self._raw: tuple[np.ndarray, np.ndarray] | None = None
        self._centered: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def rank_tol(self, w: np.ndarray) -> float:
        """Eigenvalues of a Gram/covariance matrix below ``max|w| * max(N, D) * eps`` are rounding noise
        (numpy's ``matrix_rank``/``pinv`` default tolerance). Real features are often rank-deficient (a
        final LayerNorm leaves D - 1 directions: vit-micro on digits has rank 63 of 64, MiniLM 381 of 384);
        without this cutoff their noise eigenvalues would be inverted, and a score would depend on which
        LAPACK routine produced the noise."""
        return float(np.abs(w).max(initial=0.0)) * max(self.n, self.d) * np.finfo(np.float64).eps
        self._raw: tuple[np.ndarray, np.ndarray] | None = None
        self._centered: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def raw_spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-pairs of ``X^T X`` (``N > D``) or ``X X^T`` (``N <= D``), eigenvalues clipped at 0."""
        if self._raw is None:
            w, v = sym_eigh(_gram(self.x) if self.n > self.d else _mm(self.x, self.x.T))
            self._raw = (np.clip(w, 0.0, None), v)
        return self._raw

    def centered_spectrum(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Xc, w, V)``: the centred features and the eigen-pairs of ``Xc^T Xc`` as ``(w, V)`` with ``V``
        ``(D, r)`` -- for ``N <= D`` mapped from ``Xc Xc^T`` (``v_i = Xc^T u_i / sqrt(w_i)``, only the
        non-zero part of the spectrum, ``w_i >`` :meth:`rank_tol`)."""
        if self._centered is None:
            xc = self.x - self.x.mean(axis=0)
            if self.n > self.d:
                w, v = sym_eigh(_gram(xc))
            else:
                w, u = sym_eigh(_mm(xc, xc.T))
                keep = w > max(self.rank_tol(w), 1e-300)
                w, u = w[keep], u[:, keep]
                v = _mm(xc.T, u) / np.sqrt(w)
            self._centered = (xc, w, v)
        return self._centered

    def ledoit_wolf_shrinkage(self) -> float:
        """``sklearn.covariance.ledoit_wolf_shrinkage(X, assume_centered=False)`` from the centred spectrum.

        sklearn's estimator forms ``(X^2)^T X^2`` and ``X^T X`` blockwise (minutes of BLAS for 10k x 1k); both
        sums it needs are cheaper in closed form: ``sum((X^2)^T X^2) = sum_i |x_i|^4`` and
        ``|X^T X|_F^2 = sum w_j^2`` (the squared eigenvalues). Same formula otherwise (shrinkage in [0, 1]).
        """
        xc, w, _ = self.centered_spectrum()
        n, p = self.n, self.d
        if p == 1:
            return 0.0
        row_sq = (xc**2).sum(axis=1)
        trace = row_sq.sum() / n  # sum of the empirical covariance's diagonal
        mu = trace / p
        beta_ = float((row_sq**2).sum())
        delta_ = float((w**2).sum()) / n**2
        beta = 1.0 / (p * n) * (beta_ / n - delta_)
        delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
        beta = min(beta, delta)
        return 0.0 if beta == 0 else float(beta / delta)


def as_features(features: Any) -> Features:
    return features if isinstance(features, Features) else Features(features)


# ---------------------------------------------------------------------------------------------- LogME
def _logme_targets(targets: Any, task: str, n: int) -> np.ndarray:
    """(N, K) float64 regression targets: one-hot classes, 0/1 label columns or the given values."""
    if task not in LOGME_TASKS:
        raise UserError(f"unknown LogME task '{task}'; choose one of {list(LOGME_TASKS)}")
    if task == "classification":
        y, c = check_labels(targets, n)
        return _one_hot(y, c)
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    t = np.asarray(targets, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n:
        raise UserError(f"features have {n} rows but {task} targets have shape {tuple(np.shape(targets))}")
    if not np.isfinite(t).all():
        raise UserError(f"{task} targets contain NaN or infinite values")
    if task == "multilabel":
        if not np.isin(t, (0.0, 1.0)).all():
            raise UserError("multilabel targets must be a 0/1 matrix (N samples, K labels)")
        if t.shape[1] < 1:
            raise UserError("multilabel targets need at least one label column")
    return t


def logme(
    features: Any,
    targets: Any,
    task: Literal["classification", "multilabel", "regression"] = "classification",
    *,
    max_iter: int = 11,
    tol: float = 1e-3,
) -> float:
    """LogME: mean log marginal evidence of a Bayesian linear model from the features to each target.

    You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021, and the
    fixed-point solver of You et al., "Ranking and Tuning Pre-trained Models: A New Paradigm for Exploiting
    Model Hubs", JMLR 2022 (thuml/LogME ``LogME._fit_fixed_point``). For each target column ``y_k``
    (one-hot class indicator, multi-label 0/1 column, or regression value), with ``F = U S V^T``,
    ``sigma = s^2``, ``x = U^T y_k`` and ``t = alpha / beta`` iterated to a fixed point::

        gamma = sum sigma / (sigma + t);   m2 = sum sigma x^2 / (t + sigma)^2
        res2 = sum x^2 / (1 + sigma / t)^2 + (|y|^2 - |x|^2)
        alpha = gamma / (m2 + 1e-5);  beta = (N - gamma) / (res2 + 1e-5)
        L = [D/2 log alpha + N/2 log beta - 1/2 log|alpha I + beta F^T F|
             - beta/2 res2 - alpha/2 m2 - N/2 log 2 pi] / N

    (at most ``max_iter`` = 11 steps, stopping when ``|t_new - t| / t <= tol``; a column stopped by the cap keeps
    ``m2``/``res2`` of the previous ``t``, as the reference code does, so its ``L`` is then that of the last
    iterate and not the evidence at the final alpha/beta; the tests check parity with the reference code, and the
    exact evidence only for converged columns), and the score is the mean of
    ``L`` over the target columns. ``log|alpha I + beta F^T F|`` runs over all ``D`` eigenvalues, the zero
    ones adding ``log alpha`` each, as in the paper's evidence (and the ICML code's ``each_evidence``); the
    fixed-point reference code sums over the ``min(N, D)`` (or rank-many) non-zero ones only, which equals
    the evidence when ``F`` has full column rank (``N > D``) and otherwise misses ``-(D - k)/2 log alpha``
    (checked against the Gaussian marginal likelihood ``log N(y; 0, I/beta + F F^T/alpha)`` in the tests). Vectorised over the K columns (each column keeps its own stopping step,
    exactly as the per-class loop of the reference): one Gram matrix and one eigendecomposition serve all
    classes. For ``N > D`` the spectrum comes from ``F^T F``, for ``N <= D`` from ``F F^T``; both are truncated
    at the numerical rank (singular values above 1e-10 as the reference's ``truncated_svd``, and eigenvalues
    above :meth:`Features.rank_tol`, so rank-deficient features give the exact-arithmetic value instead of
    one that depends on rounding noise; the energy of ``y`` in the dropped directions stays in ``res2``).

    Args:
        features: ``(N, D)``.
        targets: classification: ``(N,)`` class ids; multilabel: ``(N, K)`` 0/1; regression: ``(N,)`` or
            ``(N, K)`` values.
        task: ``classification``, ``multilabel`` or ``regression``.
    """
    feats = as_features(features)
    f, n, d = feats.x, feats.n, feats.d
    y = _logme_targets(targets, task, n)
    sigma, vecs = feats.raw_spectrum()
    keep = (np.sqrt(sigma) > 1e-10) & (sigma > feats.rank_tol(sigma))
    sigma, vecs = sigma[keep], vecs[:, keep]
    if n > d:
        x = _mm(vecs.T, _mm(f.T, y)) / np.sqrt(sigma)[:, None]  # = U^T y with U = F V / s
    else:
        x = _mm(vecs.T, y)
    sigma = sigma[:, None]  # (k, 1)
    x2 = x**2  # (k, K)
    res_x2 = (y**2).sum(axis=0) - x2.sum(axis=0)  # energy of y outside the span of F
    k_cols = y.shape[1]
    alpha, beta = np.ones(k_cols), np.ones(k_cols)
    m2, res2 = np.zeros(k_cols), np.zeros(k_cols)
    active = np.ones(k_cols, dtype=bool)
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(axis=0)
        m2_new = (sigma * x2 / (t + sigma) ** 2).sum(axis=0)
        res2_new = (x2 / (1 + sigma / t) ** 2).sum(axis=0) + res_x2
        alpha_new = gamma / (m2_new + 1e-5)
        beta_new = (n - gamma) / (res2_new + 1e-5)
        alpha = np.where(active, alpha_new, alpha)
        beta = np.where(active, beta_new, beta)
        m2 = np.where(active, m2_new, m2)
        res2 = np.where(active, res2_new, res2)
        active &= ~(np.abs(alpha_new / beta_new - t) / t <= tol)
        if not active.any():
            break
    k = sigma.shape[
        0
    ]  # numerical rank: the other d - k eigenvalues of F^T F are 0 and add log(alpha) to log|A|
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.log(alpha + beta * sigma).sum(axis=0)
        - 0.5 * (d - k) * np.log(alpha)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    ) / n
    return float(evidence.mean())


# ---------------------------------------------------------------------------------------------- LEEP / NCE
def check_source_probs(source_probs: Any) -> np.ndarray:
    """``(N, C_s)`` float64 rows of source-class probabilities (non-negative, each summing to 1)."""
    p = check_features(source_probs, name="source_probs")
    if (p < 0).any():
        raise UserError(
            "source_probs must be probabilities (a softmax over the source classes); found negatives"
        )
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(sums - 1)))
        raise UserError(
            f"source_probs rows must sum to 1 (row {worst} sums to {sums[worst]:.4f}); pass softmax(logits), "
            "not logits"
        )
    return p


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP, the log expected empirical prediction.

    Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020
    (reference: thuml/LogME ``LEEP.py``). With ``theta`` ``(N, C_s)`` the source model's class probabilities
    on the target images::

        P(y, z) = 1/N sum_{i: y_i = y} theta_i(z);   P(y | z) = P(y, z) / sum_y P(y, z)
        LEEP = 1/N sum_i log sum_z P(y_i | z) theta_i(z)

    A source class with zero total probability contributes nothing (its ``theta`` column is all zero).
    """
    theta = check_source_probs(source_probs)
    y, c = check_labels(labels, len(theta), what="source_probs")
    joint = _class_sums(theta, y, c) / len(theta)  # (C_t, C_s)
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = np.einsum("nz,nz->n", theta, cond[y])  # sum_z theta_i(z) P(y_i | z)
    return float(np.mean(np.log(eep)))


def nce(source_labels: Any, labels: Any) -> float:
    """NCE, the negative conditional entropy ``-H(Y | Z)`` of target labels given source labels.

    Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019 (reference:
    thuml/LogME ``NCE.py``). With ``z_i`` the source model's hard label (argmax) of target image ``i``::

        P(y, z) = #{i: y_i = y, z_i = z} / N;   NCE = sum_{y,z} P(y, z) log (P(y, z) / P(z))

    with ``0 log 0 = 0`` (the reference computes ``0 * log 0 = nan`` for an empty cell; the limit is 0).
    """
    if isinstance(source_labels, torch.Tensor):
        source_labels = source_labels.detach().cpu().numpy()
    z_raw = np.asarray(source_labels)
    if z_raw.ndim != 1:
        raise UserError(
            f"source_labels must be 1-D hard source labels (argmax of the source predictions), got shape "
            f"{tuple(z_raw.shape)}"
        )
    if len(z_raw) < 2:
        raise UserError(f"need at least 2 samples, got {len(z_raw)}")
    z, cs = check_labels(z_raw, len(z_raw), what="source_labels", min_classes=1)
    y, ct = check_labels(labels, len(z), what="source_labels")
    joint = np.bincount(y * cs + z, minlength=ct * cs).reshape(ct, cs) / len(y)
    pz = joint.sum(axis=0)
    rows, cols = np.nonzero(joint)
    p = joint[rows, cols]
    return float(np.sum(p * np.log(p / pz[cols])))


# ---------------------------------------------------------------------------------------------- H-score
def _class_means(f: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(C, D)`` class means and ``(C,)`` counts (a one-hot matmul: far faster than ``np.add.at``)."""
    counts = np.bincount(y, minlength=c).astype(np.float64)
    return _class_sums(f, y, c) / counts[:, None], counts


def _between_factor(f: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    """``B`` ``(C, D)`` with ``B^T B = cov(E[f | y])`` (np.cov, 1/(N-1)) of the per-sample class means."""
    means, counts = _class_means(f, y, c)
    mu = f.mean(axis=0)
    return np.sqrt(counts / (len(f) - 1))[:, None] * (means - mu)


def _trace_pinv_quadratic(w: np.ndarray, v: np.ndarray, b: np.ndarray, rcond: float) -> float:
    """``tr(pinv(A) B^T B)`` with ``A = V diag(w) V^T``, singular values up to ``rcond * max|w|`` dropped
    (``numpy.linalg.pinv(A, rcond)``: the sign of an eigenvalue is kept)."""
    inv = np.divide(1.0, w, out=np.zeros_like(w), where=np.abs(w) > max(rcond * np.abs(w).max(), 1e-300))
    proj = _mm(b, v)  # (C, r)
    return float(((proj**2) * inv).sum())


def hscore(features: Any, labels: Any) -> float:
    """H-score: ``tr(cov(f)^+ cov(E[f | y]))``.

    Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019
    (reference: thuml Transfer-Learning-Library ``tllib/ranking/hscore.py``): ``cov`` is ``numpy.cov``
    (1/(N-1)), ``E[f | y]`` replaces each sample by its class mean, and the inverse is the pseudo-inverse of
    ``cov(f)``. Vectorised: ``cov(E[f|y]) = B^T B`` with one row of ``B`` per class, and the pseudo-inverse
    comes from one symmetric eigendecomposition. The pseudo-inverse drops the numerical null space
    (:meth:`Features.rank_tol`, numpy's own default tolerance) where the reference passes ``rcond=1e-15``,
    which on rank-deficient features inverts rounding noise; on full-rank features both agree. For
    ``N <= D`` the score saturates at ``C - 1`` -- use :func:`hscore_shrinkage` there.
    """
    feats = as_features(features)
    y, c = check_labels(labels, feats.n)
    _, w, v = feats.centered_spectrum()
    rcond = max(feats.n, feats.d) * np.finfo(np.float64).eps
    return _trace_pinv_quadratic(w / (feats.n - 1), v, _between_factor(feats.x, y, c), rcond=rcond)


def hscore_shrinkage(features: Any, labels: Any) -> float:
    """Regularised H-score ``H_alpha = tr(cov_alpha(f)^-1 (1 - alpha) cov(E[f | y]))``.

    Ibrahim, Ponomareva and Mazumder, "Newer is Not Always Better: Rethinking Transferability Metrics, Their
    Peculiarities, Stability and Performance", ECML-PKDD 2022 (reference: Transfer-Learning-Library
    ``regularized_h_score``): ``cov_alpha`` is the Ledoit-Wolf shrinkage estimate
    ``(1 - alpha) S + alpha tr(S)/D I`` (``S`` the biased covariance, ``alpha`` as
    ``sklearn.covariance.ledoit_wolf_shrinkage``), ``cov(E[f|y])`` uses ``numpy.cov`` (1/(N-1)), and the
    inverse is ``pinv(rcond=1e-15)``. ``cov_alpha`` shares ``S``'s eigenvectors, so one eigendecomposition
    suffices; for ``N <= D`` the part of ``B`` outside the data span (zero up to rounding) is inverted with
    the shrinkage floor ``alpha tr(S)/D``.
    """
    feats = as_features(features)
    y, c = check_labels(labels, feats.n)
    n, d = feats.n, feats.d
    xc, w, v = feats.centered_spectrum()
    alpha = feats.ledoit_wolf_shrinkage()
    s_w = w / n  # eigenvalues of S (biased covariance)
    mu = float((xc**2).sum()) / n / d  # tr(S) / D
    b = _between_factor(feats.x, y, c)
    w_alpha = (1.0 - alpha) * s_w + alpha * mu
    total = _trace_pinv_quadratic(w_alpha, v, b, rcond=1e-15)
    if v.shape[1] < d and alpha > 0:  # the null space of S, where cov_alpha = alpha * mu * I
        outside = float((b**2).sum() - (_mm(b, v) ** 2).sum())
        total += max(outside, 0.0) / (alpha * mu)
    return (1.0 - alpha) * total


# ---------------------------------------------------------------------------------------------- kNN
def knn_loo_accuracy(
    features: Any,
    labels: Any,
    k: int = 20,
    temperature: float = 0.07,
    max_queries: int | None = 5000,
    chunk_size: int = 1024,
    seed: int = 0,
) -> float:
    """Leave-one-out accuracy of a cosine-similarity weighted kNN classifier on the features.

    The kNN protocol of Wu et al. (CVPR 2018) as used by DINO (Caron et al., ICCV 2021): features are
    L2-normalised, each query's ``k`` most similar *other* samples vote for their class with weight
    ``exp(cos / temperature)``, the class with the largest total wins. Every sample is a query unless
    ``N > max_queries``, then a fixed (``seed``) class-stratified subset of ``max_queries`` queries is used
    (neighbours are always searched among all N samples). Computed in float32 in chunks of ``chunk_size``
    queries (memory ``chunk_size x N``).
    """
    f = as_features(features).x
    y, c = check_labels(labels, len(f))
    n = len(f)
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    k = min(k, n - 1)
    x = torch.nn.functional.normalize(torch.from_numpy(f.astype(np.float32)), dim=1)
    yt = torch.from_numpy(y)
    queries = np.arange(n)
    if max_queries is not None and n > max_queries:
        queries = np.sort(stratified_subset(y, max_queries, seed=seed))
    correct = 0
    for start in range(0, len(queries), chunk_size):
        q = torch.from_numpy(queries[start : start + chunk_size])
        sims = x[q] @ x.T  # (B, N)
        sims[torch.arange(len(q)), q] = -float("inf")  # leave the query itself out
        vals, idx = sims.topk(k, dim=1)
        votes = torch.zeros(len(q), c).scatter_add_(1, yt[idx], torch.exp(vals / temperature))
        correct += int((votes.argmax(dim=1) == yt[q]).sum())
    return correct / len(queries)


def stratified_subset(y: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random subset of ``size`` items (fixed ``seed``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    if size >= len(y):
        return idx
    if (counts[counts > 0] < 2).any() or size < len(counts):
        return np.random.default_rng(seed).choice(idx, size=size, replace=False)
    keep, _ = train_test_split(idx, train_size=size, stratify=y, random_state=seed)
    return np.asarray(keep)


# ---------------------------------------------------------------------------------------------- SFDA
def _power_largest_eig(a: np.ndarray, iterations: int = 3) -> float:
    """Largest eigenvalue estimate by power iteration (transcribes the reference's ``iterative_A``)."""
    x = a.sum(axis=1)
    y = x
    for _ in range(iterations):
        tmp = _mm(a, x)
        y = tmp / np.linalg.norm(tmp)
        tmp = _mm(a, y)
        x = tmp / np.linalg.norm(tmp)
    return float(x @ _mm(a, y))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sfda_posteriors(
    f: np.ndarray, y: np.ndarray, c: int, shrinkage: float | None
) -> tuple[np.ndarray, float]:
    """Class posteriors ``(N, C)`` of the regularised Fisher discriminant fitted on ``(f, y)``, and the
    shrinkage used (adaptive when ``None``: ``max(exp(-5 lambda_max(S_w)), 1e-10)``)."""
    n, d = f.shape
    means, counts = _class_means(f, y, c)
    priors = counts / n
    within = f - means[y]
    sw = _gram(within) / n  # sum_c prior_c * cov_c (biased per-class covariances)
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _power_largest_eig(sw, 3)), 1e-10)
    mu = np.trace(sw) / d
    sw_shrunk = (1.0 - shrinkage) * sw
    sw_shrunk.flat[:: d + 1] += shrinkage * mu
    if not mu > 0:
        raise UserError("features are constant within every class; SFDA needs within-class variation")
    # coef = means @ V V^T with V all generalised eigenvectors of (S_b, S_w'), V^T S_w' V = I, i.e. means S_w'^-1
    try:
        coef = np.linalg.solve(sw_shrunk, means.T).T
    except np.linalg.LinAlgError:
        coef = np.linalg.lstsq(sw_shrunk, means.T, rcond=None)[0].T
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    return _softmax(_mm(f, coef.T) + intercept), shrinkage


def sfda(features: Any, labels: Any) -> float:
    """SFDA: class-posterior of the true class in a self-challenging regularised Fisher space.

    Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging Fisher
    Space", ECCV 2022 (reference: TencentARC/SFDA ``metrics.py``, ``SFDA_Score``):

    1. Regularised FDA: within-class scatter ``S_w = sum_c pi_c cov_c`` (biased), shrunk to
       ``(1 - lambda) S_w + lambda tr(S_w)/D I`` with ``lambda = max(exp(-5 lambda_max(S_w)), 1e-10)``
       (``lambda_max`` by 3 power iterations, as the reference); posteriors
       ``p(y | x) = softmax(x W mu_y^T - mu_y W mu_y^T / 2 + log pi_y)`` with ``W = V V^T`` over all
       generalised eigenvectors of ``(S_b, S_w')`` -- that is ``W = S_w'^{-1}``, computed here by a linear
       solve instead of the generalised eigenproblem.
    2. ConfMix: the posteriors are softened by another softmax, and each sample moves towards the mean of the
       *other* classes' means: ``x' = p_y x + (1 - p_y) mean_{c != y} mu_c``.
    3. Refit with the same ``lambda`` on ``x'``; the score is the mean posterior of the true class.
    """
    f = as_features(features).x.copy()
    y, c = check_labels(labels, len(f))
    prob, shrinkage = _sfda_posteriors(f, y, c, None)
    prob = _softmax(prob)  # the reference "softens" the probabilities with a second softmax
    means, _ = _class_means(f, y, c)
    others = (means.sum(axis=0) - means) / (c - 1)  # mean of the other classes' means
    p = prob[np.arange(len(y)), y][:, None]
    f = p * f + (1.0 - p) * others[y]
    prob, _ = _sfda_posteriors(f, y, c, shrinkage)
    return float(prob[np.arange(len(y)), y].mean())


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ScoreInfo:
    """A registered score: ``fn(features, labels)`` (``input='features'``), ``fn(source_probs, labels)``
    (``'source_probs'``) or ``fn(source_labels, labels)`` (``'source_labels'``)."""

    name: str
    fn: Callable[..., float]
    input: Literal["features", "source_probs", "source_labels"]
    reference: str
    description: str


SCORES: dict[str, ScoreInfo] = {
    s.name: s
    for s in (
        ScoreInfo(
            "logme",
            logme,
            "features",
            "You et al. ICML'21 / JMLR'22",
            "log marginal evidence of a linear model",
        ),
        ScoreInfo("leep", leep, "source_probs", "Nguyen et al. ICML'20", "log expected empirical prediction"),
        ScoreInfo("nce", nce, "source_labels", "Tran et al. ICCV'19", "negative conditional entropy H(Y|Z)"),
        ScoreInfo("hscore", hscore, "features", "Bao et al. ICIP'19", "tr(cov(f)^+ cov(E[f|y]))"),
        ScoreInfo(
            "hscore_shrinkage",
            hscore_shrinkage,
            "features",
            "Ibrahim et al. ECML-PKDD'22",
            "H-score with Ledoit-Wolf shrinkage",
        ),
        ScoreInfo(
            "knn", knn_loo_accuracy, "features", "Wu et al. CVPR'18 / DINO", "leave-one-out kNN accuracy"
        ),
        ScoreInfo("sfda", sfda, "features", "Shao et al. ECCV'22", "self-challenging Fisher discriminant"),
    )
}


def resolve_score_names(names: str | Sequence[str] | None) -> list[str]:
    """``None``/``'all'`` -> every score; else the comma-separated / listed names (validated)."""
    if names is None or names == "all" or names == ["all"]:
        return list(SCORES)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        key = n.strip().lower().replace("-", "_")
        if key not in SCORES:
            raise UserError(f"unknown score '{n}'; choose from {', '.join(SCORES)} (or 'all')")
        out.append(key)
    return out


@dataclass
class ScoreResult:
    """One score of one feature set: ``value`` (higher = more transferable) and the wall time it took."""

    name: str
    value: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def compute_scores(
    features: Any,
    labels: Any,
    names: str | Sequence[str] | None = None,
    *,
    source_probs: np.ndarray | None = None,
    source_probs_fn: Callable[[], Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, ScoreResult]:
    """Compute the ``names`` scores (default all) of one feature set.

    Features are validated and converted once. LEEP/NCE need source-class probabilities: ``source_probs``
    ``(N, C_s)``, or ``source_probs_fn()`` returning them (or a
    :class:`~transferkit.select.source_preds.SourcePredictions`), called lazily once; its time is reported
    in ``extra['source_seconds']`` of the first score that needed them (``seconds`` is the score alone). ``options[name]`` are keyword arguments of that score.
    """
    names = resolve_score_names(names)
    f = as_features(features)
    check_labels(labels, f.n)
    options = options or {}
    results: dict[str, ScoreResult] = {}
    source: Any = source_probs
    for name in names:
        info = SCORES[name]
        extra: dict[str, Any] = {}
        if info.input == "features":
            start = time.perf_counter()
            value = info.fn(f, labels, **options.get(name, {}))
        else:
            if source is None:
                if source_probs_fn is None:
                    raise UserError(f"score '{name}' needs source-class predictions (source_probs)")
                t0 = time.perf_counter()
                source = source_probs_fn()
                extra["source_seconds"] = time.perf_counter() - t0  # on the first score that needed them
            probs = getattr(source, "probs", source)
            extra["source"] = getattr(source, "kind", "given")
            start = time.perf_counter()
            arg = probs if info.input == "source_probs" else np.asarray(probs).argmax(axis=1)
            value = info.fn(arg, labels, **options.get(name, {}))
        results[name] = ScoreResult(name, float(value), time.perf_counter() - start, extra)
    return results


def ensemble_ranks(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean rank of each model over the scores (1 = best; ties share their average rank).

    ``values[score][model]`` -> ``{model: mean rank}``; scores with a non-finite value for a model are
    skipped for every model (so each mean uses the same scores).
    """
    from scipy.stats import rankdata

    models = sorted({m for per in values.values() for m in per})
    ranks = []
    for per in values.values():
        v = np.array([per.get(m, np.nan) for m in models], dtype=np.float64)
        if len(models) == 0 or not np.isfinite(v).all():
            continue
        ranks.append(rankdata(-v, method="average"))
    if not ranks:
        return {}
    mean = np.mean(ranks, axis=0)
    return {m: float(r) for m, r in zip(models, mean)}
