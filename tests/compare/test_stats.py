"""Comparison statistics: fair pairs, pretraining gains, McNemar, Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.compare import fair_pairs, mcnemar_p, pretraining_gains, wilson_ci
from transferkit.compare.stats import leaders, pairwise_tests, seed_summary


def test_fair_pairs_match_closest_size_across_modalities():
    def entry(name, modality, params, lin):
        return {"name": name, "modality": modality, "num_params": params, "linear": {"test_acc1": lin},
                "knn": {"test_acc1": lin - 0.1}, "pretrained": True}  # fmt: skip

    entries = [
        entry("openai-community/gpt2-medium", "language", 355_000_000, 0.70),
        entry("facebook/dinov2-large", "vision", 304_000_000, 0.90),
        entry("facebook/dinov2-small", "vision", 22_000_000, 0.85),
        entry("minilm-l6", "language", 22_700_000, 0.60),
    ]
    pairs = {p["backbone"]: p for p in fair_pairs(entries)}
    gpt2 = pairs["openai-community/gpt2-medium"]
    assert gpt2["partner"] == "facebook/dinov2-large"
    assert gpt2["size_ratio"] == pytest.approx(355 / 304) and gpt2["size_gap"] == pytest.approx(51 / 304)
    assert gpt2["linear_delta"] == pytest.approx(-0.20)
    assert pairs["minilm-l6"]["partner"] == "facebook/dinov2-small"
    assert pairs["facebook/dinov2-small"]["partner"] == "minilm-l6"
    assert fair_pairs(entries[:1]) == [] and pretraining_gains(entries) == []
    # a 22.7M language model has no fair vision partner of 304M or more at a 4x limit
    far = {p["backbone"]: p for p in fair_pairs([entries[0], entries[1], entries[3]], max_ratio=4.0)}
    assert not far["minilm-l6"]["fair"] and far["minilm-l6"]["linear_delta"] is None
    assert (
        far["minilm-l6"]["size_ratio"] == pytest.approx(304 / 22.7)
        and far["openai-community/gpt2-medium"]["fair"]
    )


def test_mcnemar_and_wilson():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 70 + [False] * 30)
    assert mcnemar_p(a, b) < 1e-4  # 20 discordant pairs, all one way
    assert mcnemar_p(a, a) == 1.0
    lo, hi = wilson_ci(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95  # Wilson 95% interval of 90/100: [0.826, 0.945]


def test_pairwise_tests_name_a_best_only_when_every_other_is_behind():
    def entry(name, lin, knn):
        return {"name": name, "linear": {"test_acc1": lin}, "knn": {"test_acc1": knn}}

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
    assert len(rows) == 3 * 2 and {(r["a"], r["b"]) for r in rows} == {("a", "b"), ("a", "c"), ("b", "c")}
    ab = next(r for r in rows if (r["a"], r["b"], r["protocol"]) == ("a", "b", "linear"))
    assert ab["delta"] == pytest.approx(0.02) and ab["p"] == pytest.approx(mcnemar_p(strong, close))
    linear = leaders(entries, rows, "linear")
    assert linear["best"] == "a" and [n for n, _ in linear["ties"]] == ["b"]  # 90 vs 88: not significant
    knn = leaders(entries, rows, "knn")
    assert knn["best"] == "b" and [n for n, _ in knn["ties"]] == ["c"]
    assert leaders(entries[:1] + [entry("d", 0.5, 0.5)],
                   pairwise_tests(entries[:1] + [entry("d", 0.5, 0.5)], {"a": correct["a"], "d": {"linear": np.arange(n) < 100, "knn": np.arange(n) < 100}}),
                   "linear")["ties"] == []  # fmt: skip


def test_seed_summary_is_mean_and_sample_sd():
    s = seed_summary([0.8, 0.9, 1.0])
    assert (
        s["mean"] == pytest.approx(0.9)
        and s["std"] == pytest.approx(0.1)
        and (s["min"], s["max"]) == (0.8, 1.0)
    )
    assert seed_summary([0.5])["std"] == 0.0
