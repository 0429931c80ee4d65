import json

import pytest

from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.probe.cache import ExtractOptions
from transferkit.select.cost import Budget
from transferkit.select.rank import cost_table, rank_backbones, rank_report


def test_rank_records_and_shows_the_latency_spread(tmp_path):
    spec = DataSpec({"source": "digits", "image_size": 16})
    extract = ExtractOptions(cache_dir=str(tmp_path), progress=False, device="cpu", precision="float32")
    names = ["vit-micro", "vit-micro:random"]
    result = rank_backbones(spec, names, scores="logme", extract=extract, cost_rounds=5, budget=Budget(1e4))
    json.dumps(result)  # metrics.json takes it as it is
    for c in result["cost"].values():
        assert c["timing"] == {"rounds": 5, "warmup": 2, "seed": 0, "interleaved_with": 2, "spread": "iqr"}
        lo, hi = c["latency_ms_iqr"]
        assert 0 < lo <= c["latency_ms"] <= hi and len(c["latency_ms_rounds"]) == 5
        assert c["images_per_s_iqr"][0] <= c["images_per_s"] <= c["images_per_s_iqr"][1]
    rec = result["recommendation"]
    assert rec["latency_interval"] == "iqr" and rec["recommended"] in names and rec["over_budget"] == {}
    assert rec["pareto"] and "budget_ties" in rec
    table = cost_table(result)
    assert "latency ms (IQR)" in table.columns and "5 rounds interleaved" in table.note
    col = table.columns.index("latency ms (IQR)")
    for row, n in zip(table.cells(), [r[0] for r in table.rows]):
        lo, hi = result["cost"][n]["latency_ms_iqr"]
        assert row[col] == f"{result['cost'][n]['latency_ms']:.1f} ({lo:.1f}-{hi:.1f})"
    assert "latency ms (IQR)" in rank_report(result).to_markdown()


def test_rank_refuses_zero_rounds():
    with pytest.raises(UserError, match="--cost_rounds must be >= 1"):
        rank_backbones(DataSpec({"source": "digits", "image_size": 16}), ["vit-micro"], cost_rounds=0)
