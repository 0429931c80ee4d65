import math

import numpy as np
import pytest

from transferkit.errors import UserError
from transferkit.select.evaluate import leave_one_dataset_out, random_ranker_expectation, rank_metrics


def test_rank_metrics():
    truth = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1}
    perfect = rank_metrics({"a": 4, "b": 2, "c": 3, "d": 1}, truth)
    assert perfect["kendall_tau"] == pytest.approx(1) and perfect["weighted_tau"] == pytest.approx(1)
    assert perfect["top1_hit"] == 1 and perfect["top1_regret"] == 0
    reverse = rank_metrics({"a": 1, "b": 3, "c": 2, "d": 4}, truth)
    assert reverse["kendall_tau"] == pytest.approx(-1) and reverse["top1_hit"] == 0
    assert reverse["top1_regret"] == pytest.approx(0.8)
    one_swap = rank_metrics({"a": 4, "b": 3, "c": 2, "d": 1}, truth)  # b/c swapped
    assert one_swap["kendall_tau"] == pytest.approx(4 / 6)
    assert math.isnan(rank_metrics({"a": 1, "b": 1}, {"a": 0.1, "b": 0.2})["kendall_tau"])
    with pytest.raises(UserError, match="no model"):
        rank_metrics({"x": 1}, truth)
    assert random_ranker_expectation(truth)["top1_hit"] == 0.25


def test_leave_one_dataset_out_with_an_oracle_and_baselines():
    truth = {f"d{i}": {"a": 0.9 - 0.1 * i, "b": 0.5, "c": 0.1 + 0.3 * i} for i in range(4)}
    calls = []

    def oracle(train, held):
        calls.append((tuple(train), held))
        assert held not in train
        return truth[held]

    baselines = {"const": {d: {"a": 3, "b": 2, "c": 1} for d in truth}}
    res = leave_one_dataset_out(list(truth), truth, oracle, baselines)
    summary = res.summary()
    assert len(calls) == 4 and summary["ranker"]["kendall_tau"] == pytest.approx(1)
    assert summary["random"]["kendall_tau"] == 0 and summary["const"]["datasets"] == 4
    assert summary["const"]["kendall_tau"] < 1
    assert set(res.to_dict()) >= {"summary", "per_dataset"}
    with pytest.raises(UserError, match="at least 2 datasets"):
        leave_one_dataset_out(["d0"], truth, oracle)
    assert np.isfinite(summary["const"]["weighted_tau"])
