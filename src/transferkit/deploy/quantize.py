"""Dynamic int8 quantization of an exported artifact, with its accuracy and speed measured on the test split.

- ONNX artifacts: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, activations
  quantized on the fly per batch), after onnxruntime's ``quant_pre_process`` (shape inference and graph
  optimisation) when that succeeds. Per-channel weights: on the MiniLM digits probe per-tensor int8 lost 17
  points of top-1, per-channel 5.6 (measured, see docs/deploy.md);
- TorchScript artifacts: ``torch.ao.quantization.quantize_dynamic`` on the backbone's ``nn.Linear`` layers
  (the task head stays fp32), then traced.

:func:`quantization_report` runs the fp32 and int8 models over the whole split (accuracy, and the top-1
agreement between them) and measures throughput at one batch size and latency at batch 1 (median of
repeated timed runs after a warm-up), so the speed-up is measured on this machine, never assumed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.deploy.artifact import MODEL_FILES, Artifact, ExportGraph
from transferkit.errors import UserError
from transferkit.tasks.protocol import check_task
from transferkit.utils.timing import time_calls

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def quantize_onnx(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of the ONNX model ``src`` into ``dst``; returns how it was done."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = src.with_name(src.name + ".data").is_file()
    preprocessed = False
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        source = src
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), save_as_external_data=external)
            source, preprocessed = pre, True
        except Exception as e:  # symbolic shape inference fails on some graphs; quantize the graph as is
            log.info("onnxruntime quant_pre_process skipped (%s: %s)", type(e).__name__, e)
        tmp_out = dst.with_name(f".{dst.name}.tmp")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs its pre-processing advice on the root logger
        try:
            quantize_dynamic(
                str(source),
                str(tmp_out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                use_external_data_format=external,
            )
        finally:
            root.setLevel(level)
        tmp_out.replace(dst)
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "int8 (QInt8, per output channel)",
        "activations": "uint8, quantized dynamically per batch",
        "pre_process": preprocessed,
    }


def quantize_torchscript(graph: ExportGraph, example: torch.Tensor, dst: Path) -> dict[str, Any]:
    """``torch.ao`` dynamic int8 quantization of every ``nn.Linear`` of ``graph``'s image backbone (of the whole
    graph for a task without one), traced to ``dst``."""
    import copy
    import warnings

    from transferkit.deploy.export import _lightning_traceable

    engine = torch.backends.quantized.engine
    if engine == "none":
        supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        if not supported:
            raise UserError("this PyTorch build has no quantized engine; use --format onnx --quantize int8")
        torch.backends.quantized.engine = engine = supported[0]
    qgraph = copy.deepcopy(graph).eval()
    # the backbone's Linear layers (nearly all of the compute); heads stay fp32, their code may read .weight
    backbone = check_task(qgraph.module).image_backbone()
    root = backbone if backbone is not None else qgraph
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec = {n: qconfig for n, m in root.named_modules() if isinstance(m, nn.Linear)}
    if not spec:
        raise UserError("the model has no nn.Linear layer to quantize; use --format onnx --quantize int8")
    with warnings.catch_warnings(), _lightning_traceable(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(root, spec, dtype=torch.qint8, inplace=True)
        traced = torch.jit.trace(qgraph, (example,), check_trace=False, strict=False)
        traced = torch.jit.freeze(traced.eval())  # drops what forward never reads (e.g. an LM's vocabulary)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.save(traced, str(tmp))
    tmp.replace(dst)
    return {
        "method": "torch.ao.quantization.quantize_dynamic",
        "weight_type": f"int8 (qint8, per output channel) weights of the backbone's {len(spec)} nn.Linear layers",
        "activations": "quantized dynamically per batch",
        "engine": engine,
    }


def quantize_artifact(
    artifact_dir: Path, fp32_graph: ExportGraph, example: torch.Tensor, fmt: str
) -> tuple[Path, dict]:
    """Write the int8 twin of an artifact's fp32 model; returns its path and the method description."""
    if fmt == "onnx":
        dst = artifact_dir / MODEL_FILES[("onnx", "int8")]
        return dst, quantize_onnx(artifact_dir / MODEL_FILES[("onnx", "fp32")], dst)
    if fmt == "torchscript":
        dst = artifact_dir / MODEL_FILES[("torchscript", "int8")]
        return dst, quantize_torchscript(fp32_graph, example, dst)
    raise UserError(f"--quantize int8 supports --format onnx or torchscript, not '{fmt}'")


# ---------------------------------------------------------------------------------------------- measuring
def evaluate_classification(
    run: Runner, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Top-1 accuracy of ``run`` over ``(images, labels)`` batches, its predictions and pure forward time."""
    preds, labels, seconds = [], [], 0.0
    for images, y in batches:
        x = images.numpy()
        t0 = time.perf_counter()
        logits = run(x)["logits"]
        seconds += time.perf_counter() - t0
        preds.append(logits.argmax(-1))
        labels.append(y.numpy())
    p, y = np.concatenate(preds), np.concatenate(labels)
    return {"acc1": float((p == y).mean()), "n": int(len(y)), "forward_s": seconds, "pred": p}


def measure_speed(run: Runner, batch: np.ndarray, repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median wall time of ``run(batch)`` over ``repeats`` timed calls after ``warmup`` calls."""
    t = time_calls(lambda: run(batch), warmup=warmup, repeats=repeats)
    return {
        "batch_size": int(batch.shape[0]),
        "ms_per_batch": 1e3 * t["median_s"],
        "images_per_s": batch.shape[0] / t["median_s"],
    }


def _file_mb(artifact: Artifact) -> float:
    path = artifact.path / artifact.metadata.files[artifact.variant]
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    with contextlib.suppress(FileNotFoundError):
        size += data.stat().st_size
    return size / 2**20


def quantization_report(
    fp32: Artifact,
    int8: Artifact,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    bench_batch_size: int = 32,
    repeats: int = 5,
    split: str = "test",
) -> dict[str, Any]:
    """Accuracy (fp32, int8, change, agreement) over ``loader`` and measured throughput/latency of both.

    Classification artifacts only: accuracy is top-1 over the ``(images, labels)`` batches of ``loader``.
    """
    if fp32.metadata.task != "classification":
        raise UserError(
            f"the accuracy check of --quantize covers classification artifacts; this one is '{fp32.metadata.task}'"
        )
    batches = list(loader)
    if not batches:
        raise UserError(f"the run's {split} split is empty; cannot measure the quantized model's accuracy")
    res = {
        "fp32": evaluate_classification(fp32.runtime, batches),
        "int8": evaluate_classification(int8.runtime, batches),
    }
    images = torch.cat([b[0] for b in batches])
    bench = images[:bench_batch_size].numpy()
    if bench.shape[0] < bench_batch_size:
        reps = -(-bench_batch_size // bench.shape[0])
        bench = np.concatenate([bench] * reps)[:bench_batch_size]
    one = images[:1].numpy()
    report: dict[str, Any] = {"split": split, "images": res["fp32"]["n"]}
    for name, art in (("fp32", fp32), ("int8", int8)):
        thr = measure_speed(art.runtime, bench, repeats)
        lat = measure_speed(art.runtime, one, repeats)
        report[name] = {
            "acc1": res[name]["acc1"],
            "images_per_s": thr["images_per_s"],
            "ms_per_batch": thr["ms_per_batch"],
            "latency_ms_batch1": lat["ms_per_batch"],
            "model_mb": _file_mb(art),
        }
    report["bench_batch_size"] = int(bench.shape[0])
    report["acc1_change"] = report["int8"]["acc1"] - report["fp32"]["acc1"]
    report["top1_agreement"] = float((res["fp32"]["pred"] == res["int8"]["pred"]).mean())
    report["speedup"] = report["int8"]["images_per_s"] / report["fp32"]["images_per_s"]
    report["latency_speedup_batch1"] = (
        report["fp32"]["latency_ms_batch1"] / report["int8"]["latency_ms_batch1"]
    )
    report["size_ratio"] = report["int8"]["model_mb"] / report["fp32"]["model_mb"]
    return report


def quantize_export(
    result: Any,
    *,
    split: str = "test",
    batch_size: int = 64,
    bench_batch_size: int = 32,
    repeats: int = 5,
) -> dict[str, Any]:
    """Add the int8 twin to an exported artifact (an :class:`~transferkit.deploy.export.ExportResult`),
    measure it against fp32 on the run's ``split`` and record the report in ``metadata.json`` and
    ``quantization.json``. Returns the report."""
    from torch.utils.data import DataLoader

    from transferkit.data.sources import collate_drop_none
    from transferkit.deploy.artifact import METADATA_FILE, load_artifact
    from transferkit.deploy.export import parity_check
    from transferkit.utils.io import atomic_write_json

    meta = result.metadata
    directory = result.directory
    dst, method = quantize_artifact(directory, result.graph, result.example, meta.format)
    meta.files["int8"] = dst.name
    meta.quantization = dict(method)  # the full report replaces it below
    atomic_write_json(directory / METADATA_FILE, meta.to_dict())
    fp32, int8 = load_artifact(directory, "fp32"), load_artifact(directory, "int8")
    try:
        dataset = result.loaded.datamodule.dataset(split)
    except UserError as e:
        raise UserError(
            f"--quantize measures accuracy on the run's {split} split, which is not available: {e}"
        ) from None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_drop_none)
    loader = (b for b in loader if b is not None)
    report = quantization_report(
        fp32, int8, loader, bench_batch_size=bench_batch_size, repeats=repeats, split=split
    )
    drift = parity_check(int8.runtime, result.graph, [result.example], atol=float("inf"))
    report["max_abs_diff_vs_eager"] = drift["max_abs_diff"]
    meta.quantization = {**method, **report}
    atomic_write_json(directory / METADATA_FILE, meta.to_dict())
    atomic_write_json(directory / "quantization.json", meta.quantization)
    return meta.quantization
