"""Dynamic int8 quantization: accuracy on the real test split within a stated tolerance, measured speed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from transferkit.deploy.artifact import load_artifact, read_metadata
from transferkit.deploy.export import export_run
from transferkit.deploy.quantize import measure_speed, quantize_export

#: largest accepted top-1 accuracy change (absolute) of the int8 model on the 360 digits test images
ACC_TOLERANCE = 0.05
#: smallest accepted share of test images where int8 and fp32 predict the same class (this 1-epoch probe's
#: logits are nearly tied, so some argmax flips are expected; a broken quantization agrees ~10% of the time)
MIN_AGREEMENT = 0.75


def check_report(q: dict) -> None:
    assert q["images"] == 360  # the whole digits test split
    assert abs(q["acc1_change"]) <= ACC_TOLERANCE, q
    assert q["acc1_change"] == pytest.approx(q["int8"]["acc1"] - q["fp32"]["acc1"])
    assert q["top1_agreement"] >= MIN_AGREEMENT, q
    for v in ("fp32", "int8"):
        assert q[v]["images_per_s"] > 0 and q[v]["latency_ms_batch1"] > 0
    assert q["speedup"] == pytest.approx(q["int8"]["images_per_s"] / q["fp32"]["images_per_s"])
    assert 0 < q["max_abs_diff_vs_eager"] < 1.0  # int8 changes the logits, but not wildly


def test_onnx_int8_accuracy_within_tolerance(onnx_export, tmp_path):
    # a copy of the shared ONNX export (quantizing adds files and rewrites metadata.json)
    shutil.copytree(onnx_export.directory, tmp_path / "onnx")
    res = dataclasses.replace(
        onnx_export, directory=tmp_path / "onnx", metadata=read_metadata(tmp_path / "onnx")
    )
    q = quantize_export(res, repeats=2, bench_batch_size=16)
    check_report(q)
    assert q["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert q["int8"]["model_mb"] < q["fp32"]["model_mb"]  # int8 weights are smaller
    meta = json.loads((tmp_path / "onnx" / "metadata.json").read_text())
    assert meta["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert meta["quantization"]["acc1_change"] == q["acc1_change"]
    assert json.loads((tmp_path / "onnx" / "quantization.json").read_text())["speedup"] == q["speedup"]
    int8 = load_artifact(tmp_path / "onnx", "int8")
    assert int8.variant == "int8" and int8.predict(np.random.rand(3, 3, 32, 32).astype("float32"))[
        "logits"
    ].shape == (3, 10)


@pytest.mark.slow
def test_torchscript_int8_with_torch_ao(onnx_export, tmp_path):
    res = export_run(None, tmp_path / "ts", "torchscript", loaded=onnx_export.loaded)
    q = quantize_export(res, repeats=2, bench_batch_size=16)
    check_report(q)
    assert q["method"] == "torch.ao.quantization.quantize_dynamic"
    assert (tmp_path / "ts" / "model.int8.pt").is_file()


def test_measure_speed_is_a_median_of_timed_calls():
    calls = []

    def run(x: np.ndarray) -> dict:
        calls.append(x.shape[0])
        return {}

    res = measure_speed(run, np.zeros((4, 3, 2, 2), np.float32), repeats=3, warmup=2)
    assert calls == [4] * 5
    assert res["batch_size"] == 4 and res["images_per_s"] > 0
