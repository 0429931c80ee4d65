"""Shipping a run: export with parity checks, int8 quantization, and an inference server.

- :mod:`transferkit.deploy.export`: ``export_run(run_dir, out_dir, format)`` -> ONNX / TorchScript / HF-style
  artifact directory, checked against the eager model;
- :mod:`transferkit.deploy.quantize`: dynamic int8 quantization with accuracy and speed measured on the test split;
- :mod:`transferkit.deploy.artifact`: ``load_artifact(path)`` -> metadata, preprocessing, runtime, postprocessing;
- :mod:`transferkit.deploy.server`: ``create_app(artifact, max_batch, max_wait_ms, max_upload_bytes, ...)``, the
  FastAPI app with its micro-batcher (imported on demand: it needs fastapi).
"""

from transferkit.deploy.artifact import Artifact, ArtifactMetadata, load_artifact, read_metadata
from transferkit.deploy.export import ExportResult, export_run

__all__ = [
    "Artifact",
    "ArtifactMetadata",
    "ExportResult",
    "export_run",
    "load_artifact",
    "read_metadata",
]
