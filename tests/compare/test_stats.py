"""Comparison statistics: fair pairs, pretraining gains, McNemar, Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.compare import fair_pairs, mcnemar_p, pretraining_gains, wilson_ci
from transferkit.compare.stats import leaders, pairwise_tests, seed_summary


def test_fair_pairs_match_closest_size_across_modalities(fixed):
    def entry(name, modality, params, lin):
        return fixed.backbone(name, linear=(lin, lin), knn=(lin - 0.1, lin - 0.1), modality=modality,
                              num_params=params, pretrained=True)[0]  # fmt: skip

    entries = [
        entry("openai-community/gpt2-medium", "language", 355_000_000, 0.70),
        entry("facebook/dinov2-large", "vision", 304_000_000, 0.90),
        entry("facebook/dinov2-small", "vision", 22_000_000, 0.85),
        entry("minilm-l6", "language", 22_700_000, 0.60),
    ]
    pairs = {p.backbone: p for p in fair_pairs(entries)}
    gpt2 = pairs["openai-community/gpt2-medium"]
    assert gpt2.partner == "facebook/dinov2-large"
    assert gpt2.size_ratio == pytest.approx(355 / 304) and gpt2.size_gap == pytest.approx(51 / 304)
    assert gpt2.deltas["linear"] == pytest.approx(-0.20) and gpt2.deltas["knn"] == pytest.approx(-0.20)
    assert gpt2.to_dict()["linear_delta"] == gpt2.deltas["linear"]  # the key results.json readers know
    assert pairs["minilm-l6"].partner == "facebook/dinov2-small"
    assert pairs["facebook/dinov2-small"].partner == "minilm-l6"
    assert fair_pairs(entries[:1]) == [] and pretraining_gains(entries) == []
    # a 22.7M language model has no fair vision partner of 304M or more at a 4x limit
    far = {p.backbone: p for p in fair_pairs([entries[0], entries[1], entries[3]], max_ratio=4.0)}
    assert not far["minilm-l6"].fair and far["minilm-l6"].deltas["linear"] is None
    assert (
        far["minilm-l6"].size_ratio == pytest.approx(304 / 22.7) and far["openai-community/gpt2-medium"].fair
    )


def test_mcnemar_and_wilson():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 70 + [False] * 30)
    assert mcnemar_p(a, b) < 1e-4  # 20 discordant pairs, all one way
    assert mcnemar_p(a, a) == 1.0
    lo, hi = wilson_ci(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95  # Wilson 95% interval of 90/100: [0.826, 0.945]


def test_pairwise_tests_name_a_best_only_when_every_other_is_behind(fixed):
    def entry(name, lin, knn):
        return fixed.backbone(name, linear=(lin, lin), knn=(knn, knn))[0]

    n = 200
    strong = np.arange(n) < 180  # 90%
    close = np.arange(n) < 176  # 88%: 4 discordant images, p = 0.125
    weak = np.arange(n) < 120  # 60%
    entries = [entry("a", 0.90, 0.60), entry("b", 0.88, 0.90), entry("c", 0.60, 0.88)]
    correct = {
        "a": {"linear": strong, "knn": weak},
        "b": {"linear": close, "knn": strong},
        "c": {"linear": weak, "knn": close},
    }
    rows = pairwise_tests(entries, correct)
    assert len(rows) == 3 * 2 and {(r.a, r.b) for r in rows} == {("a", "b"), ("a", "c"), ("b", "c")}
    ab = next(r for r in rows if (r.a, r.b, r.protocol) == ("a", "b", "linear"))
    assert ab.delta == pytest.approx(0.02) and ab.p == pytest.approx(mcnemar_p(strong, close))
    linear = leaders(entries, rows, "linear")
    assert linear.best == "a" and [n for n, _ in linear.ties] == ["b"]  # 90 vs 88: not significant
    knn = leaders(entries, rows, "knn")
    assert knn.best == "b" and [n for n, _ in knn.ties] == ["c"]
    d = entry("d", 0.5, 0.5)
    below = np.arange(n) < 100
    two = pairwise_tests([entries[0], d], {"a": correct["a"], "d": {"linear": below, "knn": below}})
    assert (
        leaders([entries[0], d], two, "linear").ties == []
        and leaders([entries[0], d], two, "linear").worst_p < 0.05
    )
    # a protocol without per-image results of a backbone is not tested: no p to claim a best with
    untested = pairwise_tests(entries, {**correct, "c": {"linear": weak}})
    assert {(r.a, r.b) for r in untested if r.protocol == "knn"} == {("a", "b")}
    assert (
        leaders(entries, untested, "knn").untested == ["c"] and leaders(entries, rows, "knn").untested == []
    )
    assert leaders(entries[:1] + [d], [], "linear").worst_p is None


def test_pretraining_gains_under_every_protocol_both_ran(fixed):
    ours, ours_correct = fixed.backbone("m", linear=(0.9, 0.9), logreg=(0.95, 0.95), knn=(0.8, 0.8))
    twin, twin_correct = fixed.backbone("m:random", linear=(0.7, 0.7), knn=(0.5, 0.5))
    (gain,) = pretraining_gains([ours, twin], {"m": ours_correct, "m:random": twin_correct})
    assert gain.random_twin == "m:random" and list(gain.protocols) == ["linear", "knn"]  # no logreg twin
    assert gain.protocols["linear"].gain == pytest.approx(0.2) and gain.protocols["knn"].p < 1e-6
    assert gain.to_dict() == {
        "backbone": "m", "random_twin": "m:random",
        "linear_pretrained": 0.9, "linear_random": 0.7, "linear_gain": pytest.approx(0.2),
        "linear_p": gain.protocols["linear"].p,
        "knn_pretrained": 0.8, "knn_random": 0.5, "knn_gain": pytest.approx(0.3), "knn_p": gain.protocols["knn"].p,
    }  # fmt: skip
    assert pretraining_gains([ours, twin])[0].protocols["linear"].p is None  # no per-image results


def test_seed_summary_is_mean_and_sample_sd():
    s = seed_summary([0.8, 0.9, 1.0])
    assert (
        s["mean"] == pytest.approx(0.9)
        and s["std"] == pytest.approx(0.1)
        and (s["min"], s["max"]) == (0.8, 1.0)
    )
    assert seed_summary([0.5])["std"] == 0.0
