"""``transferkit serve --artifact PATH [--host 127.0.0.1] [--port 8000]``: serve an exported artifact over HTTP."""

from __future__ import annotations

from typing import Literal


def serve(
    *,
    artifact: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    variant: Literal["fp32", "int8"] = "fp32",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 10.0,
    max_images_per_request: int = 64,
    max_image_pixels: int = 40_000_000,
    max_queue: int = 4096,
    top_k: int = 5,
    min_score: float = 0.5,
    threads: int | None = None,
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info",
    access_log: bool = False,
    keep_alive_s: float = 30.0,
) -> int:
    """Serve an artifact written by transferkit export (FastAPI + uvicorn, micro-batching): POST /predict,
    GET /health, GET /metadata, GET /metrics (Prometheus) and the OpenAPI docs at /docs.

    Args:
        artifact: artifact directory (holds metadata.json).
        host: interface to bind (0.0.0.0: all).
        port: TCP port.
        variant: model variant (int8 needs export --quantize int8).
        max_batch: most images per forward pass.
        max_wait_ms: longest wait for more images before a batch runs.
        max_upload_mb: largest request body (MiB).
        max_images_per_request: most images in one request.
        max_image_pixels: largest decoded image (pixels).
        max_queue: images waiting before requests get 503.
        top_k: default classes (or boxes) per image.
        min_score: detection: default lowest box score.
        threads: inference threads (default: the runtime's).
        log_level: uvicorn log level.
        access_log: log every request (uvicorn access log).
        keep_alive_s: seconds an idle keep-alive connection stays open.
    """
    import uvicorn
    from rich.console import Console

    from transferkit.deploy.server import create_app
    from transferkit.errors import UserError

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    if max_upload_mb <= 0:
        raise UserError(f"--max_upload_mb must be > 0, got {max_upload_mb}")
    app = create_app(
        artifact,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_images_per_request=max_images_per_request,
        max_image_pixels=max_image_pixels,
        max_queue=max_queue,
        top_k=top_k,
        min_score=min_score,
        variant=variant,
        threads=threads,
    )
    meta = app.state.artifact.metadata
    Console(stderr=True).print(
        f"serving [bold]{app.state.artifact.name}[/bold] ({meta.task}, {len(meta.class_names)} classes) on "
        f"http://{host}:{port}  (docs: /docs, metrics: /metrics)",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_keep_alive=keep_alive_s,
        workers=1,
    )  # fmt: skip
    return 0
