"""Artifact loading, preprocessing and per-task postprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from transferkit.data.transforms import build_eval_transform
from transferkit.deploy.artifact import (
    ArtifactMetadata,
    Preprocessing,
    build_preprocess,
    infer_task,
    load_artifact,
    read_metadata,
    to_model_input,
)
from transferkit.errors import UserError


def test_load_artifact_runs_the_exported_model(onnx_export):
    art = load_artifact(onnx_export.directory)
    assert art.metadata.task == "classification" and art.image_size == 32
    assert art.name == "tiny (onnx, fp32)"
    out = art.predict(np.random.rand(2, 3, 32, 32).astype(np.float32))
    assert out["logits"].shape == (2, 10) and out["logits"].dtype == np.float32
    with pytest.raises(UserError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        art.predict(np.zeros((2, 3, 64, 64), np.float32))


def test_preprocess_is_the_runs_eval_transform(onnx_export):
    art = load_artifact(onnx_export.directory)
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 4), dtype=np.uint8), "RGBA")
    x = art.preprocess(rgba)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    ref = build_eval_transform(32, 1.0)(rgba.convert("RGB")).numpy()
    np.testing.assert_array_equal(x, ref)
    gray = Image.fromarray(np.full((40, 40), 200, np.uint8), "L")
    assert art.preprocess(gray).shape == (3, 32, 32)


def test_square_preprocessing_for_detection():
    t = build_preprocess(Preprocessing(image_size=16, resize="square"))
    out = t(Image.new("RGB", (64, 32), (255, 0, 0)))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and int(out[..., 0].min()) == 255
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (37, 90, 3), dtype=np.uint8))
    ref = v2.Compose(
        [v2.Resize((16, 16), antialias=True), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    )
    np.testing.assert_array_equal(to_model_input(t(image)[None])[0], ref(image).numpy())


@pytest.mark.parametrize(
    ("size", "crop_pct", "interpolation", "shape"),
    [
        (32, 1.0, "bilinear", (50, 70)),  # upscale, landscape
        (32, 0.875, "bilinear", (300, 200)),  # downscale, portrait, ImageNet crop
        (24, 0.9, "bicubic", (24, 24)),  # already the size: no resize
        (16, 1.0, "nearest", (7, 5)),  # tiny
        (20, 1.2, "bilinear", (40, 60)),  # crop larger than the resized image: zero padding
        (32, 1.0, "lanczos", (33, 1000)),  # extreme aspect ratio
    ],
)
def test_server_preprocessing_equals_the_training_eval_transform(size, crop_pct, interpolation, shape):
    """The uint8 path (resize and crop on the PIL image, one float conversion per batch) gives the training-time
    v2 eval transform's tensor bit for bit."""
    image = Image.fromarray(np.random.default_rng(size).integers(0, 255, (*shape, 3), dtype=np.uint8))
    fast = build_preprocess(Preprocessing(image_size=size, crop_pct=crop_pct, interpolation=interpolation))
    ref = build_eval_transform(size, crop_pct, interpolation)(image).numpy()
    np.testing.assert_array_equal(to_model_input(fast(image)[None])[0], ref)


def test_to_model_input_is_todtype_scale_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    ref = v2.ToDtype(torch.float32, scale=True)(torch.from_numpy(values).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(to_model_input(values), ref.numpy())
    with pytest.raises(UserError, match="expected \\(B, S, S, 3\\) uint8"):
        to_model_input(values.astype(np.float32))


def test_metadata_errors(onnx_export, tmp_path):
    with pytest.raises(UserError, match="no artifact directory"):
        read_metadata(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a transferkit artifact"):
        read_metadata(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(onnx_export.directory, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "task": "segmentation"}))
    with pytest.raises(UserError, match="task 'segmentation' is not supported"):
        read_metadata(broken)
    (broken / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid artifact metadata"):
        read_metadata(broken)
    with pytest.raises(UserError, match="no int8 model"):
        load_artifact(onnx_export.directory, "int8")
    gone = tmp_path / "gone"
    shutil.copytree(onnx_export.directory, gone)
    (gone / "model.onnx").unlink()
    with pytest.raises(UserError, match="file is missing"):
        load_artifact(gone)


def test_infer_task_from_forward_outputs():
    spec, names = infer_task(torch.zeros(2, 5))
    assert spec.name == "classification" and names == ["logits"]
    det = {"pred_logits": 0, "pred_boxes": 0, "pred_objectness": 0, "aux_outputs": []}
    spec, names = infer_task(det)
    assert spec.name == "detection" and names == ["pred_logits", "pred_boxes", "pred_objectness"]
    with pytest.raises(UserError, match="cannot tell the task type"):
        infer_task({"embeddings": 0})


def _meta(task: str, class_names: list[str], **task_info) -> ArtifactMetadata:
    return ArtifactMetadata(
        format="onnx", task=task, files={"fp32": "model.onnx"}, inputs=[], outputs=[],
        preprocessing=Preprocessing(image_size=32), class_names=class_names, task_info=task_info,
    )  # fmt: skip


def test_classification_postprocess_top_k():
    from transferkit.deploy.artifact import TASKS

    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]], np.float32)
    res = TASKS["classification"].postprocess(
        {"logits": logits}, [(10, 10)] * 2, _meta("classification", ["a", "b", "c"]), 2, 0.0
    )
    assert [p["label"] for p in res[0]["top_k"]] == ["b", "c"]
    assert res[1]["top_k"][0]["class_id"] == 0
    probs = torch.tensor(logits).softmax(-1)
    assert res[0]["top_k"][0]["score"] == pytest.approx(float(probs[0, 1]))
    assert (
        len(
            TASKS["classification"].postprocess(
                {"logits": logits}, [(1, 1)] * 2, _meta("classification", ["a", "b", "c"]), 10, 0.0
            )[0]["top_k"]
        )
        == 3
    )


def test_detection_postprocess_boxes_in_uploaded_image_pixels():
    from transferkit.deploy.artifact import TASKS

    q, c = 3, 2
    logits = np.full((1, q, c + 1), -10.0, np.float32)
    logits[0, 0, 1] = 10.0  # query 0: class 1, confident
    logits[0, 1, :] = 0.0  # query 1: every class at 1/3, below min_score
    logits[0, 2, c] = 10.0  # query 2: no object
    boxes = np.array([[[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]]], np.float32)
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_objectness": np.zeros((1, q), np.float32)}
    meta = _meta("detection", ["circle", "square"], score="class", desc_vocab=[])
    res = TASKS["detection"].postprocess(outputs, [(200, 100)], meta, 10, 0.5)  # (width, height)
    assert len(res[0]["boxes"]) == 1
    box = res[0]["boxes"][0]
    assert box["label"] == "square" and box["score"] > 0.99
    assert box["box"] == pytest.approx([50.0, 25.0, 150.0, 75.0])
