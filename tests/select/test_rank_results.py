"""The typed results of ``transferkit rank``: what ``results.json`` holds and reading it back."""

import json
import math

import pytest

from transferkit.select.cost import Budget, pareto_front, recommend
from transferkit.select.rank import cost_table, rank_tables, score_rows
from transferkit.select.rank_results import (
    Agreement,
    CandidateCost,
    CandidateResult,
    CostSetup,
    MeasuredAccuracy,
    RankProtocol,
    RankResults,
    Recommendation,
    Spread,
)

DATASET = {"key": "k1", "name": "digits", "spec": {"init_args": {"source": "digits"}, "classes": None},
           "num_classes": 10, "counts": {"train": 1077, "val": 360, "test": 360}, "image_size": 16}  # fmt: skip


def _cost(latency: float, iqr: tuple[float, float], memory: float) -> CandidateCost:
    return CandidateCost(
        images_per_s=Spread(
            1000 / latency,
            (900 / latency, 1100 / latency),
            (800 / latency, 1200 / latency),
            [1000 / latency] * 3,
        ),  # fmt: skip
        latency_ms=Spread(latency, iqr, (iqr[0] - 1, iqr[1] + 1), [iqr[0], latency, iqr[1]]),
        peak_memory_mb=memory,
        gflops=0.25,
        params=1_000_000,
    )


def _candidate(name: str, logme: float, knn: float, rank: float, **kw) -> CandidateResult:
    return CandidateResult(
        name=name, num_samples=100, dim=64, num_params=1_000_000, cache_hit=False, extract_seconds=1.5,
        build_seconds=0.25, source_predictions="gmm", scores={"logme": logme, "knn": knn, "learned": -rank},
        score_seconds={"logme": 0.01, "knn": 0.02, "learned": 0.001}, ensemble_rank=rank, **kw,
    )  # fmt: skip


def results() -> RankResults:
    """Three candidates with a learned score, costs, a budget that rejects one and keeps one on a tie, and
    measured accuracies of two of them plus one other backbone."""
    return RankResults(
        dataset=DATASET,
        protocol=RankProtocol(split="val", max_samples=500, seed=3, learned_ranker="runs/r", cost_rounds=5),
        methods=["logme", "knn", "learned"],
        candidates=[
            _candidate("b", 0.2, 0.8, 1.0, cost=_cost(20.0, (18.0, 22.0), 50.0), pareto=True),
            _candidate(
                "a",
                0.1,
                0.7,
                2.0,
                cost=_cost(10.0, (9.0, 11.0), 30.0),
                pareto=True,
                budget_ties=["latency overlaps c's"],
            ),  # fmt: skip
            _candidate(
                "c", 0.0, 0.6, 3.0, cost=_cost(40.0, (35.0, 45.0), 90.0), over_budget=["memory 90 > 60 MB"]
            ),  # fmt: skip
        ],
        accuracy=MeasuredAccuracy(
            target="linear_probe/top1",
            exact_match=True,
            values={"a": 0.7, "b": 0.9, "other": 0.5},
            agreement={
                "logme": Agreement(2, 1.0, 1.0, 1.0, 0.0),
                "ensemble": Agreement(2, 1.0, 1.0, 1.0, 0.0),
            },
        ),
        cost_setup=CostSetup(
            batch_size=32,
            device="cpu",
            precision="float32",
            threads=2,
            cpus=2,
            load_avg_1m=1.5,
            timing={"rounds": 5, "warmup": 2, "seed": 3, "interleaved_with": 3, "spread": "iqr"},
        ),  # fmt: skip
        recommendation=Recommendation(by="learned", recommended="b", budget=Budget(max_memory_mb=60)),
        wall_time_s=12.5,
    )


def test_results_json_round_trip_gives_an_equal_object():
    r = results()
    d = json.loads(json.dumps(r.to_dict()))
    back = RankResults.from_dict(d)
    assert back == r
    assert back.to_dict() == d
    # metrics.json is the same with the command: read back, the command is kept as an unknown key
    m = RankResults.from_dict({"command": "rank", **d})
    assert m.extra == {"command": "rank"} and m.to_dict() == {**d, "command": "rank"}


def test_results_json_keeps_the_layout_its_readers_use():
    d = results().to_dict()
    assert list(d)[:13] == [
        "dataset", "split", "backbones", "scores", "score_seconds", "ensemble_rank", "ranking", "accuracy",
        "accuracy_target", "accuracy_exact_match", "correlations", "cost", "recommendation",
    ]  # fmt: skip
    assert d["split"] == "val" and d["protocol"]["cost_rounds"] == 5 and "split" not in d["protocol"]
    assert d["scores"]["knn"] == {"b": 0.8, "a": 0.7, "c": 0.6} and d["scores"]["learned"]["c"] == -3.0
    assert d["ranking"]["logme"] == ["b", "a", "c"]
    assert d["ensemble_rank"] == {"a": 2.0, "b": 1.0, "c": 3.0} and list(d["ensemble_rank"]) == [
        "a",
        "b",
        "c",
    ]
    assert d["backbones"]["a"]["learned"] == -2.0 and d["backbones"]["a"]["source_predictions"] == "gmm"
    assert d["accuracy"] == {"a": 0.7, "b": 0.9, "other": 0.5} and d["accuracy_target"] == "linear_probe/top1"
    assert d["correlations"]["logme"] == {"n": 2, "kendall_tau": 1.0, "weighted_tau": 1.0, "top1_hit": 1.0,
                                          "top1_regret": 0.0}  # fmt: skip
    cost = d["cost"]["a"]
    assert cost["latency_ms"] == 10.0 and cost["latency_ms_iqr"] == [9.0, 11.0] and cost["batch_size"] == 32
    assert (
        cost["timing"]["interleaved_with"] == 3 and cost["peak_memory_mb"] == 30.0 and cost["params"] == 10**6
    )
    assert d["recommendation"] == {
        "recommended": "b",
        "over_budget": {"c": ["memory 90 > 60 MB"]},
        "budget_ties": {"a": ["latency overlaps c's"]},
        "pareto": ["a", "b"],  # ascending latency
        "latency_interval": "iqr",
        "by": "learned",
        "budget": {"max_latency_ms": None, "max_memory_mb": 60, "min_images_per_s": None},
    }


def test_the_cost_section_is_what_the_cost_functions_take():
    r = results()
    costs = r.costs()
    assert pareto_front(r.predicted, {n: c["latency_ms"] for n, c in costs.items()},
                        {n: c["latency_ms_iqr"] for n, c in costs.items()}) == r.pareto  # fmt: skip
    assert recommend(r.predicted, costs, Budget(max_memory_mb=60))["over_budget"] == r.over_budget
    assert {n: CandidateCost.from_dict(c) for n, c in costs.items()} == {c.name: c.cost for c in r.candidates}


def test_the_ensemble_prediction_follows_the_order_the_recommendation_saw():
    r = results()
    assert r.predicted_by == "learned" and list(r.predicted) == ["b", "a", "c"]
    r.methods.remove("learned")
    for c in r.candidates:
        del c.scores["learned"], c.score_seconds["learned"]
    assert r.predicted_by == "ensemble" and r.predicted == {"a": -2.0, "b": -1.0, "c": -3.0}
    assert list(r.predicted) == ["a", "b", "c"]  # by name, as ensemble_ranks gives it
    assert RankResults.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_tables_and_rows_read_the_typed_results():
    r = results()
    tables = rank_tables(r)
    assert [t.title for t in tables[:3]] == ["logme", "knn", "learned"]
    assert [row[1] for row in tables[0].rows] == ["b", "a", "c"]
    assert tables[0].columns[-1] == "real linear_probe/top1" and tables[0].rows[0][-1] == 0.9
    assert tables[0].rows[2][-1] is None  # c was not measured
    assert "n = 2 measured backbones: not informative" in tables[0].note
    cost = cost_table(r)
    assert cost.columns[1] == "learned score" and [row[0] for row in cost.rows] == ["b", "a", "c"]
    verdicts = {row[0]: row[-1] for row in cost.rows}
    assert verdicts == {"b": "recommended", "a": "kept: latency overlaps c's", "c": "memory 90 > 60 MB"}
    assert {row[0]: row[7] for row in cost.rows} == {"b": "yes", "a": "yes", "c": ""}
    assert "max_memory_mb 60" in cost.note and "cpu, float32, batch 32, 2 threads" in cost.title
    rows = score_rows(r, "run1")
    assert {(x.backbone, x.metric) for x in rows} == {(n, s) for n in "abc" for s in ("logme", "knn")}
    assert all(x.split == "val" and x.run == "run1" and x.extra == {"num_params": 10**6} for x in rows)
    assert rows[0].dataset["num_train"] == 1077


def test_nan_scores_survive_the_round_trip():
    r = results()
    r.candidates[2].scores["knn"] = math.nan
    r.accuracy.agreement["logme"].kendall_tau = math.nan
    d = r.to_dict()
    assert d["ranking"]["knn"] == ["b", "a", "c"]  # NaN last
    back = RankResults.from_dict(json.loads(json.dumps(d)))
    assert json.dumps(back.to_dict()) == json.dumps(d)
    assert math.isnan(back.candidate("c").scores["knn"]) and all(x.metric != "knn" or x.backbone != "c"
                                                                  for x in score_rows(back))  # fmt: skip


def test_a_result_written_before_the_typed_results_reads_back():
    """metrics.json of the previous version: no protocol, no wall time, a point latency, no learned score."""
    old = {
        "command": "rank",
        "dataset": DATASET,
        "split": "train",
        "backbones": {"a": {"num_samples": 10, "dim": 8, "num_params": 5, "cache_hit": True,
                            "extract_seconds": 0.0, "build_seconds": 0.1, "source_predictions": None}},  # fmt: skip
        "scores": {"logme": {"a": 0.5}},
        "score_seconds": {"logme": {"a": 0.01}},
        "ensemble_rank": {"a": 1.0},
        "ranking": {"logme": ["a"]},
        "accuracy": {},
        "accuracy_target": None,
        "accuracy_exact_match": None,
        "correlations": {},
        "cost": {"a": {"images_per_s": 100.0, "latency_ms": 5.0, "batch_size": 8, "device": "cpu",
                       "precision": "float32", "peak_memory_mb": 3.0, "gflops": 0.1, "params": 5}},  # fmt: skip
        "recommendation": {"recommended": "a", "over_budget": {}, "pareto": ["a"], "by": "ensemble",
                           "budget": {"max_latency_ms": None, "max_memory_mb": None, "min_images_per_s": None}},
    }  # fmt: skip
    r = RankResults.from_dict(old)
    a = r.candidate("a")
    assert r.split == "train" and r.accuracy is None and r.extra == {"command": "rank"}
    assert (
        a.cost is not None and a.cost.latency_ms == Spread(5.0) and a.cost.latency_ms.interval == (5.0, 5.0)
    )
    assert a.cost.latency_ms.format(".1f") == "5.0" and a.pareto and r.pareto == ["a"]
    assert r.cost_setup == CostSetup(batch_size=8, device="cpu", precision="float32")
    assert r.recommendation == Recommendation(by="ensemble", recommended="a")
    assert cost_table(r).rows[0][3] == "5.0"


@pytest.mark.parametrize("key", ["images_per_s", "latency_ms"])
def test_spread_reads_and_writes_its_keys(key):
    s = Spread(2.0, (1.0, 3.0), (0.5, 4.0), [0.5, 1.0, 2.0, 3.0, 4.0])
    d = s.to_dict(key)
    assert d == {key: 2.0, f"{key}_iqr": [1.0, 3.0], f"{key}_range": [0.5, 4.0],
                 f"{key}_rounds": [0.5, 1.0, 2.0, 3.0, 4.0]}  # fmt: skip
    assert Spread.from_dict(json.loads(json.dumps(d)), key) == s and s.format(".1f") == "2.0 (1.0-3.0)"
