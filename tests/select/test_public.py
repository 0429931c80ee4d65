import json

import numpy as np
import pytest
from scipy.stats import kendalltau, weightedtau

from transferkit.errors import UserError
from transferkit.results import ResultRow
from transferkit.select.public import PUBLIC_TABLES, evaluate_table, load_table, mean_rank_prior


def _rows(
    table: dict[str, dict[str, float]], protocol: str = "finetune", metric: str = "top1"
) -> list[ResultRow]:
    return [
        ResultRow(dataset={"key": d, "name": d}, backbone=m, protocol=protocol, metric=metric, value=v)
        for d, accs in table.items()
        for m, v in accs.items()
    ]


TRUTH = {
    "d0": {"a": 0.90, "b": 0.80, "c": 0.70, "e": 0.60},
    "d1": {"a": 0.85, "b": 0.88, "c": 0.60, "e": 0.61},
    "d2": {"a": 0.70, "b": 0.65, "c": 0.75, "e": 0.50},
}


@pytest.mark.parametrize("name", PUBLIC_TABLES)
def test_shipped_tables_load_with_source_and_citation(name):
    rows, meta = load_table(name)
    assert meta["citation"] and meta["source"]["repository"].endswith("TencentARC/SFDA")
    assert len({r.dataset_name for r in rows}) == 11
    assert {r.target for r in rows} == {"finetune/top1"}
    assert all(0 < r.value <= 1 for r in rows)


def test_group1_values_and_published_rows():
    rows, meta = load_table("sfda-group1")
    acc = {(r.dataset_name, r.backbone): r.value for r in rows}
    assert acc[("aircraft", "resnet34")] == pytest.approx(0.8406)
    assert acc[("voc2007", "inception_v3")] == pytest.approx(0.8384)
    assert len(rows) == 121
    res = evaluate_table(rows, meta)
    # the published mean weighted tau of SFDA over the 11 datasets (SFDA readme)
    assert res["reference"]["sfda"]["mean"] == pytest.approx(0.71, abs=0.005)


def test_weighted_tau_per_dataset_equals_scipy_on_a_hand_table():
    scores = {"d0": {"a": 3.0, "b": 1.0, "c": 2.0, "e": 0.0}, "d1": {"a": 0.1, "b": 0.3, "c": 0.2, "e": 0.0},
              "d2": {"a": 5.0, "b": 4.0, "c": 1.0, "e": 2.0}}  # fmt: skip
    rows = _rows(TRUTH) + _rows(scores, protocol="score", metric="myscore")
    res = evaluate_table(rows, {})
    for d, accs in TRUTH.items():
        models = sorted(accs)
        s = [scores[d][m] for m in models]
        t = [accs[m] for m in models]
        got = res["per_dataset"]["myscore"][d]
        assert got["weighted_tau"] == pytest.approx(weightedtau(s, t).statistic, abs=1e-12)
        assert got["kendall_tau"] == pytest.approx(kendalltau(s, t).statistic, abs=1e-12)
        best = max(accs.values())
        top = max(models, key=lambda m: scores[d][m])
        assert got["top1_regret"] == pytest.approx(best - accs[top])
    mean = np.mean([res["per_dataset"]["myscore"][d]["weighted_tau"] for d in TRUTH])
    assert res["summary"]["myscore"]["weighted_tau"] == pytest.approx(mean)


def test_mean_rank_prior_never_sees_the_held_out_dataset():
    before = mean_rank_prior(TRUTH, "d1")
    changed = {**TRUTH, "d1": {"a": 0.1, "b": 0.2, "c": 0.99, "e": 0.98}}
    assert mean_rank_prior(changed, "d1") == before
    # ranks on d0 (a1 b2 c3 e4) and d2 (c1 a2 b3 e4): mean a 1.5, b 2.5, c 2, e 4
    assert before == {"a": -1.5, "b": -2.5, "c": -2.0, "e": -4.0}
    res = evaluate_table(_rows(TRUTH), {})
    res2 = evaluate_table(_rows(changed), {})
    assert res["per_dataset"]["prior: mean rank"]["d0"] != res2["per_dataset"]["prior: mean rank"]["d0"]


BAD_TABLES = [
    ("not json", "{", "is not JSON"),
    ("no rows", json.dumps({"name": "x"}), "no 'rows' list"),
    ("empty rows", json.dumps({"rows": []}), "no 'rows' list"),
    ("a list", json.dumps([1, 2]), "no 'rows' list"),
    (
        "row without value",
        json.dumps(
            {"rows": [{"dataset": {"key": "d"}, "backbone": "a", "protocol": "finetune", "metric": "top1"}]}
        ),
        "row 0 is not a result row",
    ),  # fmt: skip
    (
        "unknown protocol",
        json.dumps(
            {
                "rows": [
                    {
                        "dataset": {"key": "d"},
                        "backbone": "a",
                        "protocol": "guess",
                        "metric": "top1",
                        "value": 0.5,
                    }
                ]
            }
        ),
        "row 0",
    ),  # fmt: skip
    (
        "NaN value",
        '{"rows": [{"dataset": {"key": "d"}, "backbone": "a", "protocol": "finetune", "metric": "top1", '
        '"value": NaN}]}',
        "row 0",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_bad_tables_are_one_line_errors(tmp_path, case, text, message):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_table(str(path))


def test_unknown_table_name():
    with pytest.raises(UserError, match="neither a shipped table"):
        load_table("sfda-group9")


def test_one_dataset_is_not_enough():
    with pytest.raises(UserError, match="at least 2"):
        evaluate_table(_rows({"d0": TRUTH["d0"]}), {})
