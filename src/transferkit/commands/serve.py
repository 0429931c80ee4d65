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
    max_request_pixels: int = 100_000_000,
    max_in_flight: int = 64,
    body_timeout_s: float = 30.0,
    head_timeout_s: float = 10.0,
    max_header_kb: int = 64,
    api_key: str | None = None,
    cors_origins: list[str] = [],
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
        max_request_pixels: most pixels (summed over its images) one request may hold, checked before decoding.
        max_in_flight: requests served at once; more get 503 with Retry-After.
        body_timeout_s: longest time a request body may take to arrive (408 after).
        head_timeout_s: longest time a connection may take to send a complete request head (closed after).
        max_header_kb: largest request head (KiB); a bigger one gets 431 (400 from the h11 parser).
        api_key: require this key on every route but /health (also $TRANSFERKIT_API_KEY); none: open.
        cors_origins: origins allowed by CORS (none: CORS off).
    """
    import uvicorn
    from rich.console import Console

    from transferkit.deploy.server import create_app, guarded_protocol
    from transferkit.errors import UserError

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    if max_upload_mb <= 0:
        raise UserError(f"--max_upload_mb must be > 0, got {max_upload_mb}")
    import os

    api_key = api_key or os.environ.get("TRANSFERKIT_API_KEY") or None
    if max_header_kb < 1:
        raise UserError(f"--max_header_kb must be >= 1, got {max_header_kb}")
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
        max_request_pixels=max_request_pixels,
        max_in_flight=max_in_flight,
        body_timeout_s=body_timeout_s,
        api_key=api_key,
        cors_origins=cors_origins,
    )
    if not head_timeout_s > 0:
        raise UserError(f"--head_timeout_s must be > 0, got {head_timeout_s}")
    meta = app.state.artifact.metadata
    Console(stderr=True).print(
        f"serving [bold]{app.state.artifact.name}[/bold] ({meta.task}, {len(meta.class_names)} classes) on "
        f"http://{host}:{port}  (docs: /docs, metrics: /metrics{'; API key required' if api_key else ''})",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_keep_alive=keep_alive_s,
        workers=1, http=guarded_protocol(head_timeout_s, max_header_kb * 1024), loop="auto",
        h11_max_incomplete_event_size=max_header_kb * 1024,
    )  # fmt: skip
    return 0
