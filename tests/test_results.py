"""The results table: schema, protocols, replace-on-rewrite, concurrent writers, bad files."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from transferkit.errors import UserError
from transferkit.results import (
    PROTOCOLS,
    ResultRow,
    ResultsTable,
    choose_target,
    rows_of_target,
    scores_by_dataset,
    values_by_dataset,
)

DS = {"key": "k1", "name": "digits", "spec": {"init_args": {"source": "digits"}}, "image_size": 32}


def row(
    backbone: str, value: float, protocol: str = "linear_probe", metric: str = "top1", ds=DS
) -> ResultRow:
    return ResultRow(ds, backbone, protocol, metric, value, run="r")


def test_rows_carry_their_protocol_and_replace_the_same_measurement(tmp_path):
    table = ResultsTable(tmp_path / "performance.json")
    table.append([row("a", 0.5), row("b", 0.7), row("a", 0.4, "knn"), row("a", 1.5, "score", "logme")])
    table.append([row("a", 0.6)])  # the same (dataset, backbone, protocol, metric, split): replaced
    on_disk = json.loads(table.path.read_text())
    assert on_disk["schema"] == 2 and all(r["protocol"] in PROTOCOLS for r in on_disk["rows"])
    rows = table.read()
    assert len(rows) == 4
    assert values_by_dataset(rows_of_target(rows, "linear_probe/top1")) == {"k1": {"b": 0.7, "a": 0.6}}
    assert scores_by_dataset(rows) == {"logme": {"k1": {"a": 1.5}}}
    assert choose_target(rows) == "linear_probe/top1"  # the most common accuracy target
    assert choose_target(rows, "knn/top1") == "knn/top1"
    with pytest.raises(UserError, match="no rows measure 'finetune/top1'"):
        choose_target(rows, "finetune/top1")
    assert ResultsTable(tmp_path / "missing.json").read() == []


def test_bad_rows_and_files(tmp_path):
    with pytest.raises(UserError, match="unknown protocol 'sgd'"):
        row("a", 0.5, "sgd")
    path = tmp_path / "performance.json"
    path.write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        ResultsTable(path).read()
    path.write_text(json.dumps({"schema": 1, "rows": []}))
    with pytest.raises(UserError, match="schema 1"):
        ResultsTable(path).read()
    good = row("a", 0.5).to_dict()
    path.write_text(json.dumps({"schema": 2, "rows": [good, {**good, "value": None}, {"junk": 1}]}))
    assert [r.backbone for r in ResultsTable(path).read()] == ["a"]  # malformed rows skipped with a warning


def _append_many(path: str, worker: int) -> None:
    table = ResultsTable(path)
    for i in range(5):
        table.append([row(f"w{worker}-{i}", i / 10)])


def test_concurrent_processes_lose_no_row(tmp_path):
    path = str(tmp_path / "performance.json")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(r.backbone for r in ResultsTable(path).read()) == sorted(
        f"w{w}-{i}" for w in range(3) for i in range(5)
    )
