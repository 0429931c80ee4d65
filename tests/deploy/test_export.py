"""Export parity: ONNX / TorchScript / HF-format artifacts against the eager model, on real test images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from transferkit.deploy.artifact import ExportGraph, load_artifact, load_hf_graph, read_metadata
from transferkit.deploy.export import export_run, parity_check
from transferkit.errors import UserError
from transferkit.runs import LoadedRun, RunDir, load_run
from transferkit.tasks.classification import ImageClassifier

DIGITS_DATA = {
    "class_path": "transferkit.data.ImageClassificationDataModule",
    "init_args": {"source": "digits", "image_size": 32},
}


def eager_logits(module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(images).numpy()


def test_onnx_export_matches_eager_with_dynamic_batch(onnx_export, tiny_run):
    meta = onnx_export.metadata
    parity = meta.parity
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4
    assert [c["batch_size"] for c in parity["checks"]] == [8, 1]
    assert all(c["top1_agreement"] == 1.0 for c in parity["checks"])
    assert "test split" in parity["inputs"]
    # metadata on disk: everything a consumer needs without the run
    saved = json.loads((onnx_export.directory / "metadata.json").read_text())
    assert saved["task"] == "classification" and saved["format"] == "onnx"
    assert saved["class_names"] == [str(i) for i in range(10)]
    assert saved["preprocessing"]["image_size"] == 32
    assert saved["preprocessing"]["normalized_in_graph"] is True
    module = onnx_export.loaded.model
    assert saved["preprocessing"]["mean"] == pytest.approx(list(module.backbone.mean))
    assert saved["backbone"]["name"] == "vit-micro"
    assert saved["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    assert saved["parity"]["max_abs_diff"] == parity["max_abs_diff"]
    assert saved["source"]["run"] == str(tiny_run.resolve())
    # the graph's batch axis is symbolic
    model = onnx.load(str(onnx_export.directory / "model.onnx"))
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    # and a third batch size, never seen by the exporter, still matches
    art = load_artifact(onnx_export.directory)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = art.predict(x.numpy())["logits"]
    np.testing.assert_allclose(out, eager_logits(module, x), atol=1e-4)


def test_torchscript_export_matches_eager(onnx_export, tmp_path):
    res = export_run(None, tmp_path / "ts", "torchscript", loaded=onnx_export.loaded)
    assert res.passed and res.metadata.parity["max_abs_diff"] < 1e-4
    assert [c["batch_size"] for c in res.metadata.parity["checks"]] == [8, 1]
    assert (tmp_path / "ts" / "model.pt").is_file() and res.metadata.exporter.startswith("torch.jit.trace")


def test_hf_export_loads_back_and_matches(onnx_export, tmp_path):
    out = tmp_path / "hf"
    res = export_run(None, out, "hf", loaded=onnx_export.loaded)
    assert res.passed
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "metadata.json"):
        assert (out / f).is_file(), f
    config = json.loads((out / "config.json").read_text())
    assert config["task_class"] == "transferkit.tasks.ImageClassifier"
    assert config["init_args"]["backbone"]["pretrained"] is False  # rebuilt offline; weights from safetensors
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32} and pre["do_normalize"] is False
    # the parity check ran the directory rebuilt from config.json + model.safetensors against the eager model
    assert res.metadata.parity["max_abs_diff"] < 1e-5
    # the standard Auto classes load it: with the remote code shipped in the folder, or registered in-process
    from transformers import AutoModel

    from transferkit.deploy.hf_model import TransferkitModel, register_auto_classes

    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        (expected,) = load_hf_graph(out)(x)
        remote = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
        assert remote.config.model_type == "transferkit"
        torch.testing.assert_close(remote(pixel_values=x)["logits"], expected)
        register_auto_classes()
        local = AutoModel.from_pretrained(str(out)).eval()
        assert isinstance(local, TransferkitModel)
        torch.testing.assert_close(local(x)["logits"], expected)
    # weights that do not fit the config are refused with a clear message
    config["init_args"]["num_classes"] = 7
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not fit"):
        load_hf_graph(out)


def test_parity_check_reports_a_broken_export():
    torch.manual_seed(0)
    graph = ExportGraph(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)), ["logits"]
    ).eval()
    x = torch.rand(4, 3, 4, 4)

    def off_by_a_bit(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {"logits": graph(torch.from_numpy(images))[0].numpy() + 1e-3}

    res = parity_check(off_by_a_bit, graph, [x, x[:1]], atol=1e-4)
    assert not res["passed"]
    assert res["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert [c["batch_size"] for c in res["checks"]] == [4, 1]
    assert parity_check(off_by_a_bit, graph, [x], atol=1e-2)["passed"]


def test_load_run_errors(tmp_path, tiny_run):
    with pytest.raises(UserError, match="no run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.yaml"):
        load_run(tmp_path / "empty")
    with pytest.raises(UserError, match="no checkpoint"):
        load_run(tiny_run, ckpt_path=str(tmp_path / "missing.ckpt"))
    with pytest.raises(UserError, match="unknown export format"):
        export_run(tiny_run, tmp_path / "x", "tflite")


def _loaded(module, tmp_path) -> LoadedRun:
    config = {"model": {"class_path": "transferkit.tasks.ImageClassifier"}, "data": DIGITS_DATA}
    return LoadedRun(RunDir(tmp_path), tmp_path / "none.ckpt", module.eval(), config)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["gpt2-tiny", "dinov2-tiny"])
def test_onnx_parity_across_backbone_families(backbone, tmp_path):
    """A language model and an HF vision tower export with a dynamic batch and match eager (the other
    families, bert/minilm, clip, siglip, dinov3, qwen, convnet, export the same way: see docs/deploy.md)."""
    torch.manual_seed(0)
    patch = {"patch_size": 8} if backbone == "gpt2-tiny" else {}  # the language model's own option
    module = ImageClassifier(
        backbone={"name": backbone, "pretrained": False, **patch}, num_classes=10, image_size=32
    )
    module.configure_model()
    res = export_run(None, tmp_path / "onnx", "onnx", loaded=_loaded(module, tmp_path))
    assert res.passed, res.metadata.parity
    assert res.metadata.parity["max_abs_diff"] < 1e-4
    assert res.metadata.backbone["name"] == backbone


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["gpt2-tiny"])
def test_hf_export_of_hugging_face_backbones_rebuilds_offline(backbone, tmp_path):
    """The backbone's transformers config is saved with the weights, so the artifact rebuilds without the hub."""
    torch.manual_seed(0)
    module = ImageClassifier(
        backbone={"name": backbone, "pretrained": False, "patch_size": 8}, num_classes=10, image_size=32
    )
    module.configure_model()
    res = export_run(None, tmp_path / "hf", "hf", loaded=_loaded(module, tmp_path))
    assert res.passed
    assert (tmp_path / "hf" / "backbone" / "config.json").is_file()
    assert read_metadata(tmp_path / "hf").format == "hf"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        (logits,) = load_hf_graph(tmp_path / "hf")(x)
    np.testing.assert_allclose(logits.numpy(), eager_logits(module, x), atol=1e-6)
