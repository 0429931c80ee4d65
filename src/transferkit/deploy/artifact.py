"""Exported artifacts: a self-contained directory with the model, its metadata and how to feed it.

An artifact directory written by ``transferkit export`` holds

- the model in one of three formats: ``model.onnx`` (ONNX, run with onnxruntime), ``model.pt`` (TorchScript,
  ``torch.jit.load``) or ``model.safetensors`` + ``config.json`` + ``preprocessor_config.json`` (HF-style
  ``save_pretrained`` directory, rebuilt with transferkit); a quantized twin (``model.int8.onnx`` /
  ``model.int8.pt``) when exported with ``--quantize int8``;
- ``metadata.json`` (see :class:`ArtifactMetadata`): task, class names, input contract, preprocessing, backbone
  facts, the parity check (exported vs eager) and the quantization report.

Input contract of every format: ``images`` ``(B, 3, S, S)`` float32 RGB in ``[0, 1]`` (``S`` =
``preprocessing.image_size``), any batch size ``B``; the graph normalises with the backbone's mean/std itself.

Outputs by task type (see :data:`TASKS`):

- ``classification``: ``logits`` ``(B, C)``;
- ``detection`` (DETR-style): ``pred_logits`` ``(B, Q, C + 1)`` (last = no object), ``pred_boxes`` ``(B, Q, 4)``
  normalised cxcywh, ``pred_objectness`` ``(B, Q)`` and, with a description head, ``pred_desc_logits``
  ``(B, Q, V)``. Boxes come back in absolute pixel xyxy of the image as uploaded.

A new task type registers a :class:`TaskSpec` (output names, preprocessing, postprocessing) in :data:`TASKS`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transferkit.errors import UserError

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
FORMATS = ("onnx", "torchscript", "hf")
VARIANTS = ("fp32", "int8")
#: model file of each (format, variant)
MODEL_FILES: dict[tuple[str, str], str] = {
    ("onnx", "fp32"): "model.onnx",
    ("onnx", "int8"): "model.int8.onnx",
    ("torchscript", "fp32"): "model.pt",
    ("torchscript", "int8"): "model.int8.pt",
    ("hf", "fp32"): "model.safetensors",
}
HF_CONFIG_FILE = "config.json"
HF_PREPROCESSOR_FILE = "preprocessor_config.json"


class ExportGraph(nn.Module):
    """``images (B, 3, S, S)`` in [0, 1] -> tuple of the task's outputs, in ``output_names`` order.

    Wraps a task module (``ImageClassifier``, ``DetectionTask``, ...) whose ``forward(images)`` returns a
    tensor or a dict; auxiliary outputs (e.g. DETR's ``aux_outputs``) are dropped.
    """

    def __init__(self, module: nn.Module, output_names: list[str]) -> None:
        super().__init__()
        self.module = module
        self.output_names = list(output_names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(images)
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(out[k] for k in self.output_names)


# ---------------------------------------------------------------------------------------------- metadata
@dataclass
class Preprocessing:
    """How an image becomes the model input (what the run's evaluation transform did).

    ``resize``: ``shorter_side_center_crop`` (classification: shorter side to ``round(image_size /
    crop_pct)``, centre crop ``image_size``) or ``square`` (detection: resize to ``image_size`` x
    ``image_size``). ``mean``/``std`` are informational: the graph normalises its [0, 1] input itself.
    """

    image_size: int
    resize: str = "shorter_side_center_crop"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    input_range: tuple[float, float] = (0.0, 1.0)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    normalized_in_graph: bool = True


@dataclass
class ArtifactMetadata:
    """Everything ``metadata.json`` holds; ``files`` maps a variant (``fp32``/``int8``) to its model file."""

    format: str
    task: str
    files: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocessing: Preprocessing
    class_names: list[str]
    backbone: dict[str, Any] = field(default_factory=dict)
    task_info: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    exporter: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactMetadata:
        d = dict(d)
        d["preprocessing"] = Preprocessing(**d["preprocessing"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def read_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The :class:`ArtifactMetadata` of the artifact directory ``path``."""
    directory = Path(path).expanduser()
    file = directory / METADATA_FILE
    if not directory.is_dir():
        raise UserError(f"no artifact directory at '{path}'; export one with `transferkit export --run RUN`")
    if not file.is_file():
        raise UserError(
            f"'{path}' has no {METADATA_FILE}, so it is not a transferkit artifact; export one with "
            "`transferkit export --run RUN --format onnx`"
        )
    try:
        raw = json.loads(file.read_text())
        meta = ArtifactMetadata.from_dict(raw)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise UserError(
            f"{file} is not a valid artifact metadata file ({type(e).__name__}: {e}); re-export"
        ) from None
    if meta.format_version > FORMAT_VERSION:
        raise UserError(
            f"{file} was written by a newer transferkit (format {meta.format_version} > {FORMAT_VERSION}); "
            "upgrade transferkit"
        )
    if meta.task not in TASKS:
        raise UserError(f"artifact task '{meta.task}' is not supported; known: {sorted(TASKS)}")
    return meta


# ---------------------------------------------------------------------------------------------- task types
def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _classification_postprocess(
    outputs: dict[str, np.ndarray],
    sizes: Sequence[tuple[int, int]],
    meta: ArtifactMetadata,
    top_k: int,
    min_score: float,
) -> list[dict[str, Any]]:
    probs = _softmax(outputs["logits"])  # (B, C)
    k = max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = meta.class_names
    return [
        {
            "top_k": [
                {"class_id": int(c), "label": names[c] if c < len(names) else str(c), "score": float(p[c])}
                for c in idx
            ]
        }
        for p, idx in zip(probs, order)
    ]


def _detection_postprocess(
    outputs: dict[str, np.ndarray],
    sizes: Sequence[tuple[int, int]],
    meta: ArtifactMetadata,
    top_k: int,
    min_score: float,
) -> list[dict[str, Any]]:
    # the detection task's own decoding (boxes to the original image's pixels), so served boxes match `predict`
    from transferkit.heads.detr import postprocess

    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in outputs.items()}
    if "pred_objectness" not in tensors:  # heads without objectness: score 'class' does not read it
        tensors["pred_objectness"] = torch.zeros(tensors["pred_logits"].shape[:2])
    hw = torch.tensor([[h, w] for (w, h) in sizes], dtype=torch.float32)
    dets = postprocess(tensors, hw, meta.task_info.get("score", "class"))
    names, vocab = meta.class_names, meta.task_info.get("desc_vocab") or []
    results = []
    for d in dets:
        keep = (d["scores"] >= min_score).nonzero().flatten()[:top_k].tolist()
        boxes = []
        for i in keep:
            c = int(d["labels"][i])
            box = {
                "box": [round(float(v), 2) for v in d["boxes"][i].tolist()],
                "class_id": c,
                "label": names[c] if c < len(names) else str(c),
                "score": float(d["scores"][i]),
            }
            if "desc" in d:
                j = int(d["desc"][i])
                box["description"] = vocab[j] if j < len(vocab) else None
                box["description_score"] = float(d["desc_scores"][i])
            boxes.append(box)
        results.append({"boxes": boxes})
    return results


@dataclass(frozen=True)
class TaskSpec:
    """How one task type is exported and served.

    ``output_names``: outputs in graph order, picked from the task module's forward output (a tensor is
    ``output_names[0]``; a dict is indexed by name; ``optional_outputs`` are taken when present).
    ``postprocess(outputs, sizes, metadata, top_k, min_score)`` turns per-batch numpy outputs and the uploaded
    images' ``(width, height)`` into one JSON-able dict per image.
    """

    name: str
    output_names: tuple[str, ...]
    postprocess: Callable[..., list[dict[str, Any]]]
    optional_outputs: tuple[str, ...] = ()
    resize: str = "shorter_side_center_crop"


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec("classification", ("logits",), _classification_postprocess),
    "detection": TaskSpec(
        "detection",
        ("pred_logits", "pred_boxes"),
        _detection_postprocess,
        optional_outputs=("pred_objectness", "pred_desc_logits"),
        resize="square",
    ),
}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task type (export picks it when a module's outputs carry its ``output_names``)."""
    TASKS[spec.name] = spec
    return spec


def infer_task(outputs: Any, declared: str | None = None) -> tuple[TaskSpec, list[str]]:
    """The task type and the output names to export, from a module's forward output on a probe batch."""
    if declared is not None:
        if declared not in TASKS:
            raise UserError(f"task type '{declared}' has no export support; known: {sorted(TASKS)}")
        spec = TASKS[declared]
    elif isinstance(outputs, torch.Tensor):
        spec = TASKS["classification"]
    elif isinstance(outputs, dict):
        matches = [
            s for s in TASKS.values() if all(k in outputs for k in s.output_names) and len(s.output_names) > 1
        ]
        if not matches:
            raise UserError(
                f"cannot tell the task type from forward outputs with keys {sorted(outputs)}; supported: "
                "a logits tensor (classification) or a DETR-style dict with pred_logits and pred_boxes (detection)"
            )
        spec = matches[0]
    else:
        raise UserError(f"cannot export a task whose forward returns {type(outputs).__name__}")
    if isinstance(outputs, torch.Tensor):
        return spec, [spec.output_names[0]]
    names = list(spec.output_names) + [k for k in spec.optional_outputs if k in outputs]
    return spec, names


# ---------------------------------------------------------------------------------------------- preprocessing
def build_preprocess(pre: Preprocessing) -> Callable[[Image.Image], np.ndarray]:
    """PIL RGB image -> ``(S, S, 3)`` uint8: the run's evaluation transform up to the float conversion, which
    :func:`to_model_input` does for a whole batch at once.

    The resize and crop are torchvision's functional kernels on the PIL image, the ones the training-time v2
    transform dispatches to (tested equal bit for bit, after :func:`to_model_input`), without the v2 machinery's
    per-call cost (a server pays it on every image)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    interpolation = InterpolationMode(pre.interpolation)
    size = int(pre.image_size)
    if pre.resize == "shorter_side_center_crop":
        shorter = int(round(size / pre.crop_pct))

        def shorter_side_center_crop(image: Image.Image) -> np.ndarray:
            return np.asarray(F.center_crop(F.resize(image, shorter, interpolation=interpolation), size))

        return shorter_side_center_crop
    if pre.resize == "square":

        def square(image: Image.Image) -> np.ndarray:
            return np.asarray(F.resize(image, [size, size], interpolation=interpolation))

        return square
    raise UserError(f"unknown preprocessing resize mode '{pre.resize}' in the artifact metadata")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """``(B, S, S, 3)`` uint8 -> ``(B, 3, S, S)`` float32 in [0, 1], as torchvision's ``ToDtype(float32,
    scale=True)`` computes it (``x * float32(1 / 255)``)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected (B, S, S, 3) uint8 images, got {images.dtype} {tuple(images.shape)}")
    out = images.transpose(0, 3, 1, 2).astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


# ---------------------------------------------------------------------------------------------- runtimes
class Runtime:
    """Runs one model file: ``(B, 3, S, S)`` float32 -> dict of named numpy outputs with batch first."""

    output_names: list[str]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OnnxRuntime(Runtime):
    """An onnxruntime ``InferenceSession`` on CPU (or the providers given)."""

    def __init__(
        self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        # no busy-waiting of idle inference threads between runs: a server's event loop needs those cycles
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UserError(
                f"onnxruntime cannot load {path} ({type(e).__name__}: {e}); re-export the run"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.output_names, arrays))


class TorchRuntime(Runtime):
    """A ``torch.nn.Module`` (TorchScript or eager) mapping images to a tuple of outputs."""

    def __init__(
        self, module: torch.nn.Module, output_names: Sequence[str], threads: int | None = None
    ) -> None:
        self.module = module.eval()
        self.output_names = list(output_names)
        if threads:
            torch.set_num_threads(int(threads))

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: t.float().numpy() for n, t in zip(self.output_names, out)}


# ---------------------------------------------------------------------------------------------- artifact
class Artifact:
    """A loaded artifact: metadata, preprocessing and a runtime.

    ``predict(images)`` runs a ``(B, 3, S, S)`` float32 batch; ``preprocess(image)`` turns a PIL image into one
    ``(3, S, S)`` row; ``postprocess(outputs, sizes, top_k, min_score)`` gives one JSON-able dict per image.
    """

    def __init__(self, path: Path, metadata: ArtifactMetadata, runtime: Runtime, variant: str) -> None:
        self.path = path
        self.metadata = metadata
        self.runtime = runtime
        self.variant = variant
        self.task = TASKS[metadata.task]
        self._preprocess = build_preprocess(metadata.preprocessing)

    @property
    def image_size(self) -> int:
        return self.metadata.preprocessing.image_size

    @property
    def name(self) -> str:
        """``<run name> (<format>, <variant>)``."""
        run = Path(self.metadata.source.get("run") or self.path).name
        return f"{run} ({self.metadata.format}, {self.variant})"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> ``(3, S, S)`` float32 in [0, 1]."""
        return to_model_input(self.preprocess_uint8(image)[None])[0]

    def preprocess_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> ``(S, S, 3)`` uint8 (:meth:`predict_uint8` takes a stack of them)."""
        from transferkit.data.sources import to_rgb

        return self._preprocess(to_rgb(image))

    def predict_uint8(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, S, S, 3)`` uint8 (:meth:`preprocess_uint8`) -> named outputs, batch first."""
        return self.predict(to_model_input(images))

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 3, S, S)`` float32 in [0, 1] -> named outputs, batch first."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise UserError(
                f"expected images of shape (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}"
            )
        return self.runtime(images)

    def postprocess(
        self,
        outputs: dict[str, np.ndarray],
        sizes: Sequence[tuple[int, int]],
        top_k: int = 5,
        min_score: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Batch outputs and the images' ``(width, height)`` -> one result dict per image (see :data:`TASKS`)."""
        return self.task.postprocess(outputs, sizes, self.metadata, top_k, min_score)


def load_artifact(path: str | os.PathLike, variant: str = "fp32", threads: int | None = None) -> Artifact:
    """Load the artifact directory ``path``; ``variant`` ``fp32`` or ``int8`` (when exported with --quantize)."""
    directory = Path(path).expanduser()
    meta = read_metadata(directory)
    if variant not in VARIANTS:
        raise UserError(f"unknown variant '{variant}'; choose one of {list(VARIANTS)}")
    if variant not in meta.files:
        raise UserError(
            f"artifact '{path}' has no {variant} model (it has {sorted(meta.files)}); export with "
            f"`--quantize int8` to add one"
        )
    file = directory / meta.files[variant]
    if not file.is_file():
        raise UserError(
            f"artifact '{path}' lists {meta.files[variant]} but the file is missing; re-export the run"
        )
    if meta.format == "onnx":
        runtime: Runtime = OnnxRuntime(file, threads=threads)
    elif meta.format == "torchscript":
        if variant == "int8":  # the quantized engine must match the one the model was quantized with
            engine = (meta.quantization or {}).get("engine")
            if engine:
                torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice, on every load
            scripted = torch.jit.load(str(file), map_location="cpu")
        runtime = TorchRuntime(scripted, meta.output_names, threads=threads)
    elif meta.format == "hf":
        runtime = TorchRuntime(load_hf_graph(directory), meta.output_names, threads=threads)
    else:
        raise UserError(f"unknown artifact format '{meta.format}'; known: {list(FORMATS)}")
    return Artifact(directory, meta, runtime, variant)


# ---------------------------------------------------------------------------------------------- HF format
def load_hf_graph(directory: str | os.PathLike) -> torch.nn.Module:
    """The eval graph (images -> outputs tuple) of an HF-format artifact: config + safetensors, strict load."""
    from safetensors.torch import load_model

    directory = Path(directory)
    config_file = directory / HF_CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"'{directory}' has no {HF_CONFIG_FILE}; it is not an HF-format transferkit artifact")
    from transferkit.deploy.hf_model import TransferkitConfig, TransferkitModel

    config = json.loads(config_file.read_text())
    model = TransferkitModel(TransferkitConfig(**config), directory)
    try:
        load_model(model, str(directory / MODEL_FILES[("hf", "fp32")]), strict=True, device="cpu")
    except RuntimeError as e:
        raise UserError(
            f"the weights in {directory} do not fit its config.json: {str(e).splitlines()[0]}"
        ) from None
    return ExportGraph(model.task.eval(), config["output_names"])
