"""``transferkit serve --artifact PATH [--host 127.0.0.1] [--port 8000]``: serve an exported artifact over HTTP.

Starts uvicorn with the FastAPI app of :func:`transferkit.deploy.server.create_app`: ``POST /predict``,
``GET /health``, ``GET /metadata``, ``GET /metrics`` (Prometheus) and the OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="transferkit serve",
        description="Serve an artifact written by `transferkit export` (FastAPI + uvicorn, micro-batching).",
    )
    parser.add_argument(
        "--artifact", type=str, required=True, help="Artifact directory (holds metadata.json)."
    )
    parser.add_argument("--host", type=str, default="127.0.0.1", help="Interface to bind (0.0.0.0: all).")
    parser.add_argument("--port", type=int, default=8000, help="TCP port.")
    parser.add_argument(
        "--variant",
        type=Literal["fp32", "int8"],
        default="fp32",
        help="Model variant (int8 needs --quantize).",
    )
    parser.add_argument("--max_batch", type=int, default=32, help="Most images per forward pass.")
    parser.add_argument(
        "--max_wait_ms", type=float, default=5.0, help="Longest wait for more images before a batch runs."
    )
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="Largest request body (MiB).")
    parser.add_argument("--max_images_per_request", type=int, default=64, help="Most images in one request.")
    parser.add_argument(
        "--max_image_pixels", type=int, default=40_000_000, help="Largest decoded image (pixels)."
    )
    parser.add_argument("--max_queue", type=int, default=4096, help="Images waiting before requests get 503.")
    parser.add_argument("--top_k", type=int, default=5, help="Default classes (or boxes) per image.")
    parser.add_argument("--min_score", type=float, default=0.5, help="Detection: default lowest box score.")
    parser.add_argument(
        "--threads", type=int | None, default=None, help="Inference threads (default: runtime's)."
    )
    parser.add_argument(
        "--log_level",
        type=Literal["critical", "error", "warning", "info", "debug"],
        default="info",
        help="uvicorn log level.",
    )
    parser.add_argument(
        "--access_log", type=bool, default=False, help="Log every request (uvicorn access log)."
    )
    parser.add_argument(
        "--keep_alive_s", type=float, default=30.0, help="Seconds an idle keep-alive connection stays open."
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``transferkit serve`` until interrupted; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2

    import uvicorn
    from rich.console import Console

    from transferkit.deploy.server import create_app
    from transferkit.errors import UserError

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max_upload_mb must be > 0, got {args.max_upload_mb}")
    app = create_app(
        args.artifact,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images_per_request=args.max_images_per_request,
        max_image_pixels=args.max_image_pixels,
        max_queue=args.max_queue,
        top_k=args.top_k,
        min_score=args.min_score,
        variant=args.variant,
        threads=args.threads,
    )
    meta = app.state.artifact.metadata
    Console(stderr=True).print(
        f"serving [bold]{app.state.artifact.name}[/bold] ({meta.task}, {len(meta.class_names)} classes) on "
        f"http://{args.host}:{args.port}  (docs: /docs, metrics: /metrics)",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_keep_alive=args.keep_alive_s,
        workers=1,
    )
    return 0
