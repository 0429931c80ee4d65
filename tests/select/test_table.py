import json

import pytest

from transferkit.errors import UserError
from transferkit.select.table import (
    PerfRow,
    choose_metric,
    read_performance_rows,
    read_score_rows,
    scores_by_dataset,
    truth_by_dataset,
    write_performance_rows,
    write_score_rows,
)

COMPARE_ROW = {  # the shape transferkit.compare.performance_rows writes (docs/compare.md)
    "dataset": {
        "name": "digits",
        "fingerprint": "fp1",
        "num_classes": 10,
        "num_train": 1077,
        "image_size": 32,
    },
    "backbone": "minilm-l6",
    "pretrained": True,
    "metric": "linear_top1",
    "split": "test",
    "value": 0.91,
    "run": "runs/compare",
}


def test_reads_compare_rows_and_round_trips_our_rows(tmp_path):
    path = tmp_path / "performance.json"
    path.write_text(
        json.dumps({"schema": 1, "rows": [COMPARE_ROW, {**COMPARE_ROW, "value": None}, {"junk": 1}]})
    )
    rows = read_performance_rows(path)
    assert len(rows) == 1
    r = rows[0]
    assert (r.dataset, r.model, r.accuracy, r.metric, r.dataset_name) == (
        "fp1",
        "minilm-l6",
        0.91,
        "linear_top1",
        "digits",
    )
    assert r.data["image_size"] == 32 and r.extra["run"] == "runs/compare"
    spec = {"source": "digits", "path": None, "image_size": 32, "classes": ["0", "1"], "split": "train"}
    write_performance_rows(path, [PerfRow("task1", "vit-micro", 0.5, "logreg", "digits[0,1]", spec)])
    write_performance_rows(
        path, [PerfRow("task1", "vit-micro", 0.6, "logreg", "digits[0,1]", spec)]
    )  # replaces
    rows = read_performance_rows(path)
    assert len(rows) == 2 and rows[1].accuracy == 0.6 and rows[1].data["classes"] == ["0", "1"]
    assert json.loads(path.read_text())["rows"][0] == COMPARE_ROW  # other writers' rows kept verbatim
    assert truth_by_dataset(rows) == {"fp1": {"minilm-l6": 0.91}, "task1": {"vit-micro": 0.6}}
    assert choose_metric(rows + rows[:1]) == "linear_top1"
    with pytest.raises(UserError, match="no rows with metric"):
        choose_metric(rows, "finetune_top1")
    assert read_performance_rows(tmp_path / "missing.json") == []


def test_score_table(tmp_path):
    path = tmp_path / "transferability.json"
    write_score_rows(
        path,
        [{"dataset": "d", "model": "a", "split": "train", "scores": {"logme": 1.0, "knn": float("nan")}}],
    )
    write_score_rows(path, [{"dataset": "d", "model": "b", "split": "train", "scores": {"logme": 2.0}}])
    write_score_rows(path, [{"dataset": "d", "model": "a", "split": "train", "scores": {"logme": 3.0}}])
    rows = read_score_rows(path)
    assert len(rows) == 2
    assert scores_by_dataset(rows) == {"logme": {"d": {"b": 2.0, "a": 3.0}}}


def test_bad_table(tmp_path):
    path = tmp_path / "performance.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        read_performance_rows(path)
