import json

import pytest

from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions
from transferkit.select.cost import Budget, recommend
from transferkit.select.rank import cost_table, rank_backbones, rank_report
from transferkit.select.rank_results import RankResults


def test_rank_records_and_shows_the_latency_spread(tmp_path):
    spec = DataSpec({"source": "digits", "image_size": 16})
    extract = ExtractOptions(cache_dir=str(tmp_path), progress=False, device="cpu", precision="float32")
    names = ["vit-micro", "vit-micro:random"]
    result = rank_backbones(spec, names, scores="logme", extract=extract, cost_rounds=5, budget=Budget(1e4))
    assert result.names == names and result.methods == ["logme"] and result.protocol.cost_rounds == 5
    setup = result.cost_setup
    assert setup is not None and setup.device == "cpu" and setup.precision == "float32"
    assert setup.timing == {"rounds": 5, "warmup": 2, "seed": 0, "interleaved_with": 2, "spread": "iqr"}
    for c in result.candidates:
        assert c.cost is not None
        lo, hi = c.cost.latency_ms.iqr
        assert 0 < lo <= c.cost.latency_ms.median <= hi and len(c.cost.latency_ms.rounds) == 5
        assert c.cost.images_per_s.iqr[0] <= c.cost.images_per_s.median <= c.cost.images_per_s.iqr[1]
    rec = result.recommendation
    assert rec is not None and rec.latency_interval == "iqr" and rec.by == "ensemble"
    assert rec.recommended in names and result.over_budget == {} and rec.budget == Budget(1e4)
    # the Pareto set the candidates carry is the one recommend() computes, in the same order
    assert (
        result.pareto and result.pareto == recommend(result.predicted, result.costs(), rec.budget)["pareto"]
    )

    table = cost_table(result)
    assert "latency ms (IQR)" in table.columns and "5 rounds interleaved" in table.note
    col = table.columns.index("latency ms (IQR)")
    for row, n in zip(table.cells(), [r[0] for r in table.rows]):
        lat = result.candidate(n).cost.latency_ms
        assert row[col] == f"{lat.median:.1f} ({lat.iqr[0]:.1f}-{lat.iqr[1]:.1f})"
    md = rank_report(result).to_markdown()
    assert "cost on this machine" in md and "latency ms (IQR)" in md

    # results.json: the keys its readers use, and a round trip back to an equal object
    d = result.to_dict()
    for key in (
        "dataset",
        "split",
        "backbones",
        "scores",
        "score_seconds",
        "ensemble_rank",
        "ranking",
        "accuracy",
        "accuracy_target",
        "accuracy_exact_match",
        "correlations",
        "cost",
        "recommendation",
    ):
        assert key in d, key  # fmt: skip
    assert set(d["cost"]) == set(names) and d["cost"]["vit-micro"]["timing"]["rounds"] == 5
    assert d["recommendation"]["pareto"] == result.pareto and d["backbones"]["vit-micro"]["num_params"] > 0
    back = RankResults.from_dict(json.loads(json.dumps(d)))
    assert back == result
    assert back.to_dict() == json.loads(json.dumps(d))


def test_rank_without_cost_has_no_recommendation(tmp_path):
    spec = DataSpec({"source": "digits", "image_size": 16})
    extract = ExtractOptions(cache_dir=str(tmp_path), progress=False, device="cpu")
    result = rank_backbones(
        spec, ["vit-micro", "vit-micro:random"], scores="knn", extract=extract, cost=False
    )
    assert result.recommendation is None and result.cost_setup is None and result.pareto == []
    assert all(c.cost is None for c in result.candidates) and result.protocol.cost_rounds is None
    d = result.to_dict()
    assert "cost" not in d and "recommendation" not in d
    assert RankResults.from_dict(json.loads(json.dumps(d))) == result
    md = rank_report(result).to_markdown()
    assert "knn" in md and "cost on this machine" not in md
    with pytest.raises(ValueError, match="needs a result with costs"):
        cost_table(result)


def test_rank_refuses_zero_rounds():
    with pytest.raises(UserError, match="--cost_rounds must be >= 1"):
        rank_backbones(DataSpec({"source": "digits", "image_size": 16}), ["vit-micro"], cost_rounds=0)
