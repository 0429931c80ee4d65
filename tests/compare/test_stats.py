"""Comparison statistics: fair pairs, pretraining gains, McNemar, Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.compare import fair_pairs, mcnemar_p, pretraining_gains, wilson_ci


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


def test_mcnemar_and_wilson():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 70 + [False] * 30)
    assert mcnemar_p(a, b) < 1e-4  # 20 discordant pairs, all one way
    assert mcnemar_p(a, a) == 1.0
    lo, hi = wilson_ci(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95  # Wilson 95% interval of 90/100: [0.826, 0.945]
