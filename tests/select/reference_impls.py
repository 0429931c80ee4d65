"""Straightforward, un-vectorised transcriptions of the authors' reference code, used as independent
references in the score tests (thuml/LogME ``LogME._fit_fixed_point`` / ``LEEP.py`` / ``NCE.py``,
Transfer-Learning-Library ``hscore.py``, TencentARC/SFDA ``metrics.py``).

They loop over classes / samples exactly as the references do and share no code with
``transferkit.select.scores``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg


def logme_reference(f: np.ndarray, y: np.ndarray, regression: bool = False, per_class: bool = False):
    """thuml/LogME ``LogME._fit_fixed_point`` (per-class loop, SVD as in the reference).

    ``per_class=True`` returns ``[(evidence, alpha, beta, k)]`` per target column (``k``: singular values
    used) instead of the mean evidence."""
    f = f.astype(np.float64)
    if regression:
        y = y.astype(np.float64)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
    N, D = f.shape
    if N > D:
        # truncated_svd
        u_, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        u_times_sigma = f @ vh.T
        k = int(np.sum(s > 1e-10))
        s = s.reshape(-1, 1)[:k]
        vh = vh[:k]
        u = u_times_sigma[:, :k] / s.reshape(1, -1)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
        s = s.reshape(-1, 1)
    sigma = s**2
    evidences = []
    num_dim = y.shape[1] if regression else int(y.max() + 1)
    for i in range(num_dim):
        y_ = y[:, i] if regression else (y == i).astype(np.float64)
        y_ = y_.reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (
            D / 2.0 * np.log(alpha)
            + N / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - N / 2.0 * np.log(2 * np.pi)
        )
        evidences.append((evidence / N, alpha, beta, len(sigma)))
    if per_class:
        return evidences
    return float(np.mean([e[0] for e in evidences]))


def logme_reference_full_logdet(f: np.ndarray, y: np.ndarray, regression: bool = False) -> float:
    """:func:`logme_reference` with ``log|alpha I + beta F^T F|`` over all D eigenvalues: the fixed-point code
    sums over its k non-zero singular values only, so ``-(D - k)/2 log alpha`` is added back per target."""
    d, n = f.shape[1], f.shape[0]
    per = logme_reference(f, y, regression, per_class=True)
    return float(np.mean([e - (d - k) / (2 * n) * np.log(a) for e, a, _, k in per]))


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The Bayesian linear model's log evidence straight from its definition, per sample:
    ``log N(y; 0, I / beta + F F^T / alpha) / N`` (scipy's multivariate normal)."""
    from scipy.stats import multivariate_normal

    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    return float(multivariate_normal(np.zeros(n), cov).logpdf(y)) / n


def leep_reference(theta: np.ndarray, y: np.ndarray) -> float:
    """Explicit loops over the LEEP definition (Nguyen et al. 2020, eqs. 1-2)."""
    n, cs = theta.shape
    ct = int(y.max()) + 1
    joint = [[0.0] * cs for _ in range(ct)]
    for i in range(n):
        for z in range(cs):
            joint[int(y[i])][z] += theta[i, z] / n
    total = 0.0
    for i in range(n):
        eep = 0.0
        for z in range(cs):
            pz = sum(joint[yy][z] for yy in range(ct))
            if pz > 0:
                eep += joint[int(y[i])][z] / pz * theta[i, z]
        total += math.log(eep)
    return total / n


def nce_reference(z: np.ndarray, y: np.ndarray) -> float:
    """Explicit loops over the NCE definition (Tran et al. 2019): -H(Y|Z), 0 log 0 = 0."""
    n = len(z)
    counts: dict[tuple[int, int], int] = {}
    zc: dict[int, int] = {}
    for zi, yi in zip(z, y):
        counts[(int(yi), int(zi))] = counts.get((int(yi), int(zi)), 0) + 1
        zc[int(zi)] = zc.get(int(zi), 0) + 1
    return sum((c / n) * math.log((c / n) / (zc[zz] / n)) for (_, zz), c in counts.items())


def hscore_reference(f: np.ndarray, y: np.ndarray) -> float:
    """Transfer-Learning-Library ``h_score``."""
    covf = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    for i in range(int(y.max() + 1)):
        g[y == i] = np.mean(f[y == i, :], axis=0)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.dot(np.linalg.pinv(covf, rcond=1e-15), covg)))


def hscore_shrinkage_reference(f: np.ndarray, y: np.ndarray) -> float:
    """Transfer-Learning-Library ``regularized_h_score`` (sklearn LedoitWolf estimator)."""
    from sklearn.covariance import LedoitWolf

    f = f.astype("float64")
    f = f - np.mean(f, axis=0, keepdims=True)
    g = np.zeros_like(f)
    cov = LedoitWolf(assume_centered=False).fit(f)
    alpha = cov.shrinkage_
    for i in range(int(y.max() + 1)):
        g[y == i] = np.mean(f[y == i, :], axis=0)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.dot(np.linalg.pinv(cov.covariance_, rcond=1e-15), (1 - alpha) * covg)))


def _cov(x: np.ndarray, shrinkage: float = -1) -> np.ndarray:
    emp_cov = np.cov(np.asarray(x).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    d = emp_cov.shape[0]
    mu = np.trace(emp_cov) / d
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk


def _iterative_a(a: np.ndarray, max_iterations: int = 3) -> float:
    x = a.sum(axis=1)
    for _ in range(max_iterations):
        temp = a @ x
        y = temp / np.linalg.norm(temp, 2)
        temp = a @ y
        x = temp / np.linalg.norm(temp, 2)
    return float(x.T @ a @ y)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


class _SFDAReference:
    """TencentARC/SFDA ``SFDA`` class: generalised eigenproblem, per-class covariance loop."""

    def __init__(self, shrinkage=None):
        self.shrinkage = shrinkage

    def fit(self, x, y):
        classes, yt = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(yt) / float(len(y))
        cnt = np.bincount(yt)
        means = np.zeros((len(classes), x.shape[1]))
        np.add.at(means, yt, x)
        means /= cnt[:, None]
        cov = np.zeros((x.shape[1], x.shape[1]))
        for idx, group in enumerate(classes):
            cov += self.priors_[idx] * np.atleast_2d(_cov(x[y == group, :]))
        sw = cov
        if self.shrinkage is None:
            self.shrinkage = max(np.exp(-5 * _iterative_a(sw, 3)), 1e-10)
        st = _cov(x, shrinkage=self.shrinkage)
        d = sw.shape[0]
        mu = np.trace(sw) / d
        shrunk_sw = (1.0 - self.shrinkage) * sw
        shrunk_sw.flat[:: d + 1] += self.shrinkage * mu
        sb = st - shrunk_sw
        evals, evecs = linalg.eigh(sb, shrunk_sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = means @ evecs @ evecs.T
        self.intercept_ = -0.5 * np.diag(means @ self.coef_.T) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _softmax(x @ self.coef_.T + self.intercept_)


def sfda_reference(x: np.ndarray, y: np.ndarray) -> float:
    """TencentARC/SFDA ``SFDA_Score``."""
    x = x.astype(np.float64).copy()
    n = len(y)
    c = len(np.unique(y))
    first = _SFDAReference()
    prob = first.fit(x, y).predict_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    means = np.stack([x[y == k].mean(axis=0) for k in range(c)])
    means_ = np.zeros_like(means)
    for i in range(c):
        means_[i] = (np.sum(means, axis=0) - means[i]) / (c - 1)
    for k in range(c):
        idx = np.where(y == k)[0]
        p = prob[idx, k].reshape(-1, 1)
        x[idx] = p * x[idx] + (1 - p) * means_[k]
    second = _SFDAReference(shrinkage=first.shrinkage)
    prob = second.fit(x, y).predict_proba(x)
    return float(np.sum(prob[np.arange(n), y]) / n)
