"""Transferability scores: equality with the authors' reference algorithms, sanity, speed-independent checks,
bad inputs.

Expected numbers were computed once by running the un-vectorised transcriptions of the reference code in
``reference_impls.py`` (thuml/LogME ``LogME._fit_fixed_point``, ``LEEP.py``, ``NCE.py``; Transfer-Learning-
Library ``hscore.py``; TencentARC/SFDA ``metrics.py``) on the fixed inputs below (``numpy.random.default_rng(42)``,
see ``_inputs``), and the LEEP/NCE values of the 4-sample tables by hand. The tests check the vectorised
implementations against both the literal numbers and the transcriptions, to 1e-6.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from transferkit.errors import UserError
from transferkit.select import scores as S

sys.path.insert(0, str(Path(__file__).parent))
import reference_impls as ref  # noqa: E402

TOL = 1e-6


def _inputs():
    rng = np.random.default_rng(42)
    f = rng.normal(size=(40, 6))
    y = np.arange(40) % 3
    f[:, 0] += y
    f2 = rng.normal(size=(10, 16))  # N < D
    y2 = np.arange(10) % 2
    reg = rng.normal(size=(40, 2))
    multilabel = (rng.random((40, 3)) < 0.4).astype(float)
    theta = rng.dirichlet(np.ones(4), 12)
    yy = np.arange(12) % 3
    return f, y, f2, y2, reg, multilabel, theta, yy


# ---------------------------------------------------------------------------------------------- exact values
def test_logme_matches_reference_values():
    f, y, f2, y2, reg, ml, _, _ = _inputs()
    # literal values from reference_impls.logme_reference (thuml/LogME fixed-point algorithm)
    assert S.logme(f, y) == pytest.approx(-0.7611944542919317, abs=TOL)  # N > D
    assert S.logme(f, reg, task="regression") == pytest.approx(-1.4091169951410767, abs=TOL)
    assert S.logme(f, ml, task="multilabel") == pytest.approx(-0.875093339838689, abs=TOL)
    # N < D: the reference code gives 0.609225212888177, which leaves out -(D - k)/2 log(alpha) of
    # log|alpha I + beta F^T F| (its sum runs over the N non-zero singular values only); with it added back
    # (reference_impls.logme_reference_full_logdet) the value is:
    assert S.logme(f2, y2) == pytest.approx(-0.941135174596579, abs=TOL)
    # ... which is the evidence by definition, log N(y; 0, I/beta + F F^T/alpha) / N at the reference's alpha,
    # beta (up to its stopping tolerance: the last m2/res2 belong to the previous t)
    per = ref.logme_reference(f2, y2, per_class=True)
    direct = np.mean(
        [ref.gaussian_log_evidence(f2, (y2 == c).astype(float), a, b) for c, (_, a, b, _) in enumerate(per)]
    )
    assert S.logme(f2, y2) == pytest.approx(direct, abs=1e-3)
    assert abs(ref.logme_reference(f2, y2) - direct) > 1.0
    # and the transcription itself, on other shapes (full column rank: identical; N <= D: with the log-det fix)
    rng = np.random.default_rng(0)
    for n, d in [(40, 6), (10, 16), (25, 25), (300, 12), (7, 50)]:
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
        labels = rng.integers(0, 4, n)
        labels[:4] = np.arange(4)
        t = rng.normal(size=(n, 3))
        expected = ref.logme_reference if n > d else ref.logme_reference_full_logdet
        assert S.logme(x, labels) == pytest.approx(expected(x, labels), abs=TOL)
        assert S.logme(x, t, "regression") == pytest.approx(expected(x, t, True), abs=TOL)


def test_logme_is_invariant_to_null_directions():
    """3 real directions embedded in 40 dims at a large scale (37 eigenvalues of F^T F are rounding noise):
    the evidence integrates the null directions' weights out, so LogME equals that of the 3-dim features."""
    rng = np.random.default_rng(7)
    y = np.arange(400) % 4
    low = rng.normal(size=(400, 3)) * 300 + y[:, None] * 100
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]  # orthonormal columns
    high = low @ basis.T
    assert S.logme(high, y) == pytest.approx(ref.logme_reference(low, y), abs=TOL)
    wide = np.concatenate([low, np.zeros((400, 5))], axis=1)  # exact zero columns
    assert S.logme(wide, y) == pytest.approx(ref.logme_reference(low, y), abs=TOL)


def test_logme_is_sensitive_to_the_details():
    """A plausible slip (dropping the residual energy outside the span of F) must change the value."""
    f, y, *_ = _inputs()
    f_wide = np.random.default_rng(1).normal(size=(40, 6))
    assert abs(S.logme(f_wide, y) - S.logme(f, y)) > 1e-3
    # a label permutation that is not a relabelling changes the score
    assert abs(S.logme(f, np.roll(y, 1)) - S.logme(f, y)) > 1e-3
    # a relabelling does not (labels are mapped to 0..C-1; the mean over classes is order-free)
    assert S.logme(f, (y + 7) * 3) == pytest.approx(S.logme(f, y), abs=1e-12)


def test_leep_hand_computed_and_reference():
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    y = np.array([0, 0, 1, 1])
    # by hand: P(y|z) = [[.75, .25], [.25, .75]]; EEP = .7, .55, .65, .6
    assert S.leep(theta, y) == pytest.approx(-0.4740301211381995, abs=TOL)
    assert S.leep(theta, y) == pytest.approx(np.mean(np.log([0.7, 0.55, 0.65, 0.6])), abs=1e-12)
    *_, th, yy = _inputs()
    assert S.leep(th, yy) == pytest.approx(-1.080585255191991, abs=TOL)  # reference_impls.leep_reference
    assert S.leep(th, yy) == pytest.approx(ref.leep_reference(th, yy), abs=TOL)


def test_nce_hand_computed_and_reference():
    # z = 0 -> y in {0, 1} equally (H = ln 2), z = 1 -> y = 1 (H = 0): NCE = -1/2 ln 2
    assert S.nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(
        -0.34657359027997264, abs=TOL
    )
    # a perfect source labelling has zero conditional entropy
    assert S.nce(np.array([2, 2, 5, 5]), np.array([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)
    *_, th, yy = _inputs()
    z = th.argmax(1)
    assert S.nce(z, yy) == pytest.approx(-0.8297276722545784, abs=TOL)  # reference_impls.nce_reference
    assert S.nce(z, yy) == pytest.approx(ref.nce_reference(z, yy), abs=TOL)


def test_hscore_sfda_match_references():
    f, y, *_ = _inputs()
    assert S.hscore(f, y) == pytest.approx(0.63234021177843, abs=TOL)
    assert S.hscore_shrinkage(f, y) == pytest.approx(0.3241784666208617, abs=TOL)
    assert S.sfda(f, y) == pytest.approx(0.4033788636192546, abs=TOL)
    rng = np.random.default_rng(3)
    for n, d in [(60, 8), (30, 50), (41, 40)]:
        x = rng.normal(size=(n, d))
        labels = np.arange(n) % 4
        x[:, :2] += labels[:, None]
        assert S.hscore_shrinkage(x, labels) == pytest.approx(
            ref.hscore_shrinkage_reference(x, labels), rel=1e-6
        )
        assert S.sfda(x, labels) == pytest.approx(ref.sfda_reference(x, labels), abs=TOL)
        if n > d + 1:  # for N <= D the reference's pinv inverts rounding noise; ours saturates at C-1 exactly
            assert S.hscore(x, labels) == pytest.approx(ref.hscore_reference(x, labels), rel=1e-6)
        else:
            assert S.hscore(x, labels) == pytest.approx(3.0, abs=1e-6)


def test_hscore_on_layernorm_like_features_ignores_the_null_space():
    """Rows summing to zero (a final LayerNorm's output) have a rank-(D-1) covariance. The H-score equals that
    of the same features in D-1 coordinates; pinv(rcond=1e-15), as the reference calls it, would invert the
    rounding noise of the null direction instead."""
    rng = np.random.default_rng(11)
    y = np.arange(300) % 3
    x = rng.normal(size=(300, 12)) + y[:, None] * rng.normal(size=12)
    x -= x.mean(axis=1, keepdims=True)  # every row in the hyperplane orthogonal to (1, ..., 1)
    basis = np.linalg.qr(np.eye(12) - 1 / 12)[0][:, :11]  # orthonormal basis of that hyperplane
    assert S.hscore(x, y) == pytest.approx(ref.hscore_reference(x @ basis, y), rel=1e-6)


def test_ledoit_wolf_shrinkage_matches_sklearn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    rng = np.random.default_rng(5)
    for n, d in [(200, 10), (20, 60), (50, 50)]:
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        assert S.Features(x).ledoit_wolf_shrinkage() == pytest.approx(ledoit_wolf_shrinkage(x), abs=1e-10)


def test_knn_loo_accuracy_small_case():
    # two tight clusters far apart: every left-out point's neighbours share its class
    x = np.array([[1.0, 0.0], [0.99, 0.05], [0.98, -0.05], [0.0, 1.0], [0.05, 0.99], [-0.05, 0.98]])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert S.knn_loo_accuracy(x, y, k=2) == 1.0
    # a point whose only neighbours are the other class is misclassified: leave-one-out, not resubstitution
    assert S.knn_loo_accuracy(x, np.array([0, 0, 1, 1, 1, 1]), k=2) == pytest.approx(5 / 6)
    # max_queries: a stratified subset of queries, neighbours among all samples
    big = np.random.default_rng(0).normal(size=(300, 4))
    labels = (big[:, 0] > 0).astype(int)
    acc = S.knn_loo_accuracy(big, labels, k=5, max_queries=100)
    assert 0.8 < acc <= 1.0


# ---------------------------------------------------------------------------------------------- sanity
def _separable_and_random(n=200, d=32, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centers = rng.normal(size=(c, d)) * 4
    separable = centers[y] + rng.normal(size=(n, d))
    random = rng.normal(size=(n, d)) * np.linalg.norm(centers, axis=1).mean() / np.sqrt(d)
    return separable, random, y


@pytest.mark.parametrize("name", list(S.SCORES))
def test_every_score_prefers_separable_features(name):
    from transferkit.select.source_preds import gmm_pseudo_source

    separable, random, y = _separable_and_random()
    values = []
    for x in (separable, random):
        feats = S.Features(x)
        res = S.compute_scores(
            feats, y, [name], source_probs_fn=lambda feats=feats: gmm_pseudo_source(feats, y)
        )
        values.append(res[name].value)
        assert res[name].seconds >= 0
    assert values[0] > values[1], f"{name}: separable {values[0]} <= random {values[1]}"


def test_compute_scores_shares_one_decomposition_and_reports_source_time():
    separable, _, y = _separable_and_random()
    feats = S.Features(separable)
    res = S.compute_scores(feats, y, "all", source_probs=np.full((len(y), 3), 1 / 3))
    assert set(res) == set(S.SCORES)
    assert feats._centered is not None and feats._raw is not None  # computed once, cached on the instance
    assert res["leep"].extra["source"] == "given"
    # a uniform source model carries no information: LEEP = log(1/C), NCE = -H(Y) = log(1/C)
    assert res["leep"].value == pytest.approx(math.log(1 / 4))
    assert res["nce"].value == pytest.approx(math.log(1 / 4))


def test_ensemble_ranks():
    ranks = S.ensemble_ranks({"a": {"x": 3.0, "y": 2.0, "z": 1.0}, "b": {"x": 1.0, "y": 2.0, "z": 0.0}})
    assert ranks == {"x": 1.5, "y": 1.5, "z": 3.0}


# ---------------------------------------------------------------------------------------------- bad inputs
FEATURE_SCORES = [n for n, s in S.SCORES.items() if s.input == "features"]


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_bad_inputs_raise_clear_errors(name):
    fn = S.SCORES[name].fn
    x = np.random.default_rng(0).normal(size=(20, 5))
    y = np.arange(20) % 2
    with pytest.raises(UserError, match="1 class"):
        fn(x, np.zeros(20, dtype=int))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UserError, match="NaN or infinite values in 1 of 20 rows.*row 3"):
        fn(bad, y)
    with pytest.raises(UserError, match="features have 20 rows but labels have 19"):
        fn(x, y[:19])
    with pytest.raises(UserError, match="2-D"):
        fn(x[:, :, None], y)


def test_bad_source_inputs():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(UserError, match="found negatives"):
        S.leep(np.array([[2.0, -1.0]] * 4), y)
    with pytest.raises(UserError, match="sum to 1.*logits"):
        S.leep(np.array([[3.0, 1.0]] * 4), y)
    with pytest.raises(UserError, match="source_probs have 4 rows but labels have 3"):
        S.leep(np.full((4, 2), 0.5), y[:3])
    with pytest.raises(UserError, match="1 class"):
        S.nce(np.array([0, 1, 0, 1]), np.array([1, 1, 1, 1]))
    with pytest.raises(UserError, match="1-D hard source labels"):
        S.nce(np.full((4, 2), 0.5), y)
    with pytest.raises(UserError, match="unknown LogME task"):
        S.logme(np.ones((4, 2)), y, task="ranking")
    with pytest.raises(UserError, match="0/1 matrix"):
        S.logme(np.random.default_rng(0).normal(size=(4, 2)), np.full((4, 2), 0.5), task="multilabel")
    with pytest.raises(UserError, match="unknown score 'logmee'"):
        S.resolve_score_names("logme,logmee")
    with pytest.raises(UserError, match="needs source-class predictions"):
        S.compute_scores(np.random.default_rng(0).normal(size=(4, 2)), y, ["leep"])
