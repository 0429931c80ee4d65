"""Export a run's model to ONNX, TorchScript or an HF-style directory, and check it against eager PyTorch.

The exported graph is the whole evaluation model: ``images (B, 3, S, S)`` float32 RGB in [0, 1] -> the task's
outputs (classification: ``logits (B, C)``; detection: ``pred_logits``, ``pred_boxes``, ...). The backbone
normalises its input inside the graph, so a caller only resizes and scales pixels to [0, 1].

Exporters:

- ONNX: ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension; if the dynamo exporter fails on a
  model, the TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``) is tried;
- TorchScript: ``torch.jit.trace`` of the graph;
- HF: a ``save_pretrained``-style directory: ``config.json`` (task class, its init arguments, output names),
  ``model.safetensors`` (the task module's ``state_dict``), ``preprocessor_config.json`` (HF image-processor
  keys) and, for Hugging Face backbones, ``backbone/config.json`` so the architecture rebuilds offline.

Parity: the exported model and the eager model run the same real images of the run's test split at two batch
sizes (the export batch and 1, which also proves the batch axis is dynamic); the largest absolute difference of
any output must stay under ``atol`` (1e-4 in fp32).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.deploy.artifact import (
    HF_CONFIG_FILE,
    HF_PREPROCESSOR_FILE,
    METADATA_FILE,
    MODEL_FILES,
    ArtifactMetadata,
    ExportGraph,
    Preprocessing,
    TaskSpec,
    infer_task,
    load_artifact,
)
from transferkit.deploy.hf_model import AUTO_MAP, REMOTE_CODE
from transferkit.errors import UserError
from transferkit.runs import LoadedRun, load_run
from transferkit.tasks.protocol import check_task
from transferkit.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
#: above this many parameter bytes ONNX weights go to an external ``model.onnx.data`` file (protobuf's 2 GiB cap)
EXTERNAL_DATA_BYTES = 1_500_000_000


# ---------------------------------------------------------------------------------------------- the graph
@contextlib.contextmanager
def _lightning_traceable() -> Iterator[None]:
    """Let ``torch.jit.trace`` walk LightningModules without a Trainer (what ``to_torchscript`` does)."""
    try:
        from lightning.pytorch import LightningModule
    except ImportError:  # pragma: no cover - lightning is a dependency
        yield
        return
    old = LightningModule._jit_is_scripting
    LightningModule._jit_is_scripting = True
    try:
        yield
    finally:
        LightningModule._jit_is_scripting = old


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[io.StringIO]:
    """Collect the exporters' console chatter (progress lines, constant-folding warnings) for the debug log."""
    buf = io.StringIO()
    noisy = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "root")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
        if buf.getvalue().strip():
            log.debug("exporter output:\n%s", buf.getvalue())


# ---------------------------------------------------------------------------------------------- runs
def sample_images(loaded: LoadedRun, n: int, split: str = "test") -> tuple[torch.Tensor, str]:
    """The first ``n`` eval-transformed images of ``split`` ``(n, 3, S, S)``, and where they came from.

    Falls back to uniform random images (logged) when the run's data cannot be rebuilt.
    """
    try:
        ds = loaded.datamodule.dataset(split)
        images = [ds[i][0] for i in range(min(n, len(ds))) if ds[i] is not None]
        if images:
            return torch.stack(images), f"{split} split"
    except UserError as e:
        log.warning("the run's %s split is not available (%s); checking parity on random images", split, e)
    size = int(loaded.model.hparams.get("image_size") or 224)
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen), "uniform random images"


# ---------------------------------------------------------------------------------------------- exporters
def export_onnx(graph: ExportGraph, example: torch.Tensor, path: Path, opset: int | None = None) -> str:
    """Write ``graph`` to ``path`` with a dynamic batch axis; returns a description of the exporter used."""
    output_names = graph.output_names
    external = sum(p.numel() * p.element_size() for p in graph.parameters()) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_exporters(), torch.no_grad():
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=True,
                input_names=["images"],
                output_names=output_names,
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                external_data=external,
                optimize=True,
            )
        exporter = "torch.onnx.export (dynamo)"
    except Exception as e:  # the dynamo exporter fails on some models; the TorchScript-based one may not
        log.warning(
            "the dynamo ONNX exporter failed (%s: %s); trying the TorchScript-based exporter",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
        try:
            with _quiet_exporters(), _lightning_traceable(), torch.no_grad():
                torch.onnx.export(
                    graph,
                    (example,),
                    str(path),
                    dynamo=False,
                    input_names=["images"],
                    output_names=output_names,
                    dynamic_axes=axes,
                    opset_version=opset or 17,
                )
        except Exception as e2:
            raise UserError(
                f"neither ONNX exporter could export this model (dynamo: {type(e).__name__}: {e}; "
                f"TorchScript-based: {type(e2).__name__}: {e2}); try --format torchscript or --format hf"
            ) from None
        exporter = "torch.onnx.export (TorchScript-based)"
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return f"{exporter}, opset {opsets.get('ai.onnx', '?')}"


def export_torchscript(graph: ExportGraph, example: torch.Tensor, path: Path) -> str:
    """``torch.jit.trace`` of ``graph`` saved to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporters(), _lightning_traceable(), torch.no_grad():
        traced = torch.jit.trace(graph, (example,), check_trace=False, strict=False)
        traced = torch.jit.freeze(traced.eval())
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice, on every save
        torch.jit.save(traced, str(tmp))
    tmp.replace(path)
    return "torch.jit.trace + torch.jit.freeze"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple | set) else str(o)))


def export_hf(loaded: LoadedRun, graph: ExportGraph, directory: Path, pre: Preprocessing) -> str:
    """Write the HF-style directory (see the module docstring) for ``loaded``'s task module."""
    from safetensors.torch import save_model

    module = loaded.model
    directory.mkdir(parents=True, exist_ok=True)
    init_args = _jsonable(dict(module.hparams))
    if isinstance(
        init_args.get("backbone"), dict
    ):  # every weight is in model.safetensors: nothing to download
        init_args["backbone"]["pretrained"] = False
    backbone = check_task(module).image_backbone()
    backbone_dir = None
    if backbone is not None:
        hf_config = backbone.hf_config()
        if hf_config is not None:  # rebuild the architecture from this config: no hub access at load time
            hf_config.save_pretrained(str(directory / "backbone"))
            backbone_dir = "backbone"
    config = {
        "architectures": ["TransferkitModel"],
        "model_type": "transferkit",
        "auto_map": AUTO_MAP,
        "task_class": loaded.task_class,
        "init_args": init_args,
        "backbone_dir": backbone_dir,
        "backbone_normalization": (
            {"mean": list(backbone.mean), "std": list(backbone.std)} if backbone is not None else None
        ),
        "output_names": graph.output_names,
    }
    from transferkit import __version__

    config["transferkit_version"] = __version__
    # TransferkitModel's state_dict: the task module under "task."
    tmp = directory / f".{MODEL_FILES[('hf', 'fp32')]}.tmp"
    save_model(torch.nn.ModuleDict({"task": module}), str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / MODEL_FILES[("hf", "fp32")])
    for name, code in REMOTE_CODE.items():
        atomic_write_text(directory / name, code)
    atomic_write_json(directory / HF_CONFIG_FILE, config)
    # the Hugging Face image-processor keys, for tools that read them (the graph itself normalises)
    atomic_write_json(
        directory / HF_PREPROCESSOR_FILE,
        {
            "image_processor_type": "transferkit",
            "do_resize": True,
            "size": {"shortest_edge": round(pre.image_size / pre.crop_pct)}
            if pre.resize == "shorter_side_center_crop"
            else {"height": pre.image_size, "width": pre.image_size},
            "do_center_crop": pre.resize == "shorter_side_center_crop",
            "crop_size": {"height": pre.image_size, "width": pre.image_size},
            "resample": {"nearest": 0, "bilinear": 2, "bicubic": 3}.get(pre.interpolation, 2),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": False,
            "image_mean": list(pre.mean),
            "image_std": list(pre.std),
            "normalized_in_model": True,
        },
    )
    return "safetensors state_dict + config.json (save_pretrained layout)"


# ---------------------------------------------------------------------------------------------- parity
def parity_check(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    graph: ExportGraph,
    batches: list[torch.Tensor],
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """Max absolute difference between ``run`` (an exported model) and eager ``graph`` on each batch.

    Returns ``{"atol", "passed", "max_abs_diff", "checks": [{"batch_size", "max_abs_diff", "per_output",
    "top1_agreement"}]}``; top-1 agreement compares the argmax of the first output's last axis.
    """
    checks = []
    for x in batches:
        with torch.no_grad():
            ref = [t.float().numpy() for t in graph(x)]
        out = run(x.numpy())
        per_output = {}
        for name, r in zip(graph.output_names, ref):
            o = out[name]
            if o.shape != r.shape:
                raise UserError(
                    f"exported output '{name}' has shape {o.shape}, eager {r.shape}: the export is broken"
                )
            per_output[name] = float(np.abs(o.astype(np.float64) - r).max()) if r.size else 0.0
        first = graph.output_names[0]
        agree = float((out[first].argmax(-1) == ref[0].argmax(-1)).mean()) if ref[0].size else 1.0
        checks.append(
            {
                "batch_size": int(x.shape[0]),
                "max_abs_diff": max(per_output.values()),
                "per_output": per_output,
                "top1_agreement": agree,
            }
        )
    worst = max(c["max_abs_diff"] for c in checks)
    return {"atol": atol, "passed": bool(worst <= atol), "max_abs_diff": worst, "checks": checks}


# ---------------------------------------------------------------------------------------------- metadata
def preprocessing_for(loaded: LoadedRun, spec: TaskSpec) -> Preprocessing:
    """The run's evaluation preprocessing (image size, crop, interpolation) and the backbone's mean/std."""
    module = loaded.model
    data_args = (loaded.config.get("data") or {}).get("init_args") or {}
    size = int(module.hparams.get("image_size") or data_args.get("image_size") or 224)
    backbone = check_task(module).image_backbone()
    return Preprocessing(
        image_size=size,
        resize=spec.resize,
        crop_pct=float(data_args.get("crop_pct", 1.0)) if spec.resize == "shorter_side_center_crop" else 1.0,
        interpolation=str(data_args.get("interpolation", "bilinear")),
        mean=tuple(backbone.mean) if backbone is not None else (0.0, 0.0, 0.0),
        std=tuple(backbone.std) if backbone is not None else (1.0, 1.0, 1.0),
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from transferkit import __version__

    out = {"transferkit": __version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "transformers", "timm"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _task_info(module: Any, spec: TaskSpec) -> tuple[list[str], dict[str, Any]]:
    hp = module.hparams
    names = list(hp.get("class_names") or [])
    if not names and hp.get("num_classes"):
        names = [str(i) for i in range(int(hp["num_classes"]))]
    info: dict[str, Any] = {}
    if spec.name == "detection":
        info = {"score": hp.get("score", "class"), "desc_vocab": list(hp.get("desc_vocab") or [])}
    for key in ("adaptation",):
        if key in hp:
            info[key] = hp[key]
    return names, info


# ---------------------------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """What :func:`export_run` wrote (``directory``, ``metadata``) and what quantization reuses: the eager
    ``graph``, the ``loaded`` run and the ``example`` batch the model was exported with."""

    directory: Path
    metadata: ArtifactMetadata
    timings: dict[str, float]
    graph: ExportGraph | None = field(default=None, repr=False)
    loaded: LoadedRun | None = field(default=None, repr=False)
    example: torch.Tensor | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return bool(self.metadata.parity.get("passed"))


def export_run(
    run_dir: str | Path | None,
    out_dir: str | Path | None = None,
    format: str = "onnx",
    *,
    ckpt_path: str = "best",
    parity_images: int = 8,
    atol: float = DEFAULT_ATOL,
    split: str = "test",
    opset: int | None = None,
    loaded: LoadedRun | None = None,
) -> ExportResult:
    """Export the run at ``run_dir`` to ``out_dir`` (default ``<run>/export/<format>``) and check parity.

    ``loaded`` (from :func:`load_run`) skips loading the run again. Writes the model file(s) and
    ``metadata.json``; the parity check is in ``result.metadata.parity`` (``result.passed``).
    """
    if format not in ("onnx", "torchscript", "hf"):
        raise UserError(f"unknown export format '{format}'; choose onnx, torchscript or hf")
    if parity_images < 2:
        raise UserError(f"parity_images must be >= 2 (a batch, then batch size 1), got {parity_images}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = loaded or load_run(run_dir, ckpt_path=ckpt_path)
    timings["load_s"] = time.perf_counter() - t0
    module = loaded.model
    directory = Path(out_dir).expanduser() if out_dir else loaded.path / "export" / format
    directory.mkdir(parents=True, exist_ok=True)

    images, images_from = sample_images(loaded, parity_images + 1, split)
    batch, single = images[:parity_images], images[parity_images:][:1]
    if single.shape[0] == 0:  # a split with no more images: reuse the first one
        single = images[:1]
    with torch.no_grad():
        probe = module(batch[:2])
    declared = check_task(module).export_task
    spec, output_names = infer_task(probe, declared)
    graph = ExportGraph(module, output_names).eval()
    pre = preprocessing_for(loaded, spec)
    if tuple(batch.shape[-2:]) != (pre.image_size, pre.image_size):
        raise UserError(
            f"the run's {split} images are {tuple(batch.shape[-2:])} but the model expects {pre.image_size}px; "
            "check data.image_size in the run's config.yaml"
        )

    t0 = time.perf_counter()
    file = directory / MODEL_FILES[(format, "fp32")]
    if format == "onnx":
        exporter = export_onnx(graph, batch, file, opset)
    elif format == "torchscript":
        exporter = export_torchscript(graph, batch, file)
    else:
        exporter = export_hf(loaded, graph, directory, pre)
    timings["export_s"] = time.perf_counter() - t0

    names, info = _task_info(module, spec)
    with torch.no_grad():
        shapes = [list(t.shape[1:]) for t in graph(batch[:1])]
    backbone = check_task(module).image_backbone()
    meta = ArtifactMetadata(
        format=format,
        task=spec.name,
        files={"fp32": file.name},
        inputs=[
            {
                "name": "images",
                "shape": ["batch", 3, pre.image_size, pre.image_size],
                "dtype": "float32",
                "range": [0.0, 1.0],
                "layout": "NCHW",
                "channels": "RGB",
            }
        ],
        outputs=[
            {"name": n, "shape": ["batch", *s], "dtype": "float32"} for n, s in zip(output_names, shapes)
        ],
        preprocessing=pre,
        class_names=names,
        backbone=_jsonable(asdict(backbone.info())) if backbone is not None else {},
        task_info=info,
        source={
            "run": str(loaded.path.resolve()),
            "checkpoint": str(loaded.checkpoint.resolve()),
            "task_class": loaded.task_class,
        },
        exporter=exporter,
        versions=_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    atomic_write_json(directory / METADATA_FILE, meta.to_dict())

    t0 = time.perf_counter()
    artifact = load_artifact(directory)
    parity = parity_check(artifact.runtime, graph, [batch, single], atol)
    k = batch.shape[0]
    parity["inputs"] = (
        f"{images_from}: images 0-{k - 1} (batch {k}), image {k if images.shape[0] > k else 0} (batch 1)"
    )
    timings["parity_s"] = time.perf_counter() - t0
    meta.parity = parity
    atomic_write_json(directory / METADATA_FILE, meta.to_dict())
    log.info(
        "exported %s to %s (%s); parity max |diff| %.3g (atol %.0e): %s",
        loaded.path,
        directory,
        exporter,
        parity["max_abs_diff"],
        atol,
        "ok" if parity["passed"] else "FAILED",
    )
    return ExportResult(directory, meta, timings, graph, loaded, batch)
