"""FastAPI inference server for an exported artifact, with server-side micro-batching.

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /predict``: one or many images as ``multipart/form-data`` file parts (any field names), as JSON
  ``{"images": ["<base64>", ...]}`` (or ``{"image": "<base64>"}``; data URLs accepted), or as a raw
  ``image/*`` body. Query ``top_k`` (classes per image, or boxes per image for detection) and ``min_score``
  (detection). Returns one prediction per image, in upload order (:class:`PredictResponse`).
- ``GET /health``: liveness and the batcher's state; ``GET /metadata``: the artifact's metadata and the
  server settings; ``GET /metrics``: Prometheus text format (requests, latency, batch sizes, queue depth).

Micro-batching (:class:`MicroBatcher`): every image of every request enters one queue; a worker takes the
first waiting image, then keeps collecting for up to ``max_wait_ms`` or until ``max_batch`` images, stacks
them and runs one forward pass in a worker thread (the event loop keeps accepting requests meanwhile). Row
``i`` of the batch output goes back to the future of the ``i``-th collected image, so each request gets
exactly its own rows.

Bad input never reaches the model and never stops the server: wrong request content type -> 415, a file part
that declares a non-image type -> 415, body over ``max_upload_bytes`` (by ``Content-Length`` or by the bytes
actually read) -> 413, image over ``max_image_pixels`` -> 413, undecodable / truncated / empty image -> 422,
malformed JSON or base64, no image, too many images -> 400, a full queue -> 503. Every error body is JSON:
``{"detail": {"error": <code>, "message": <what to do>, ...}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from transferkit.deploy.artifact import Artifact, load_artifact
from transferkit.errors import UserError

log = logging.getLogger(__name__)

IMAGE_PART_TYPES = ("image/", "application/octet-stream")
#: images up to this many pixels are decoded on the event loop, larger ones in a worker thread
INLINE_DECODE_PIXELS = 256 * 256


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class ServerConfig:
    """Server limits and defaults (all configurable from ``transferkit serve``)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_bytes: int = 10 * 2**20
    max_images_per_request: int = 64
    max_image_pixels: int = 40_000_000
    max_queue: int = 4096
    top_k: int = 5
    min_score: float = 0.5
    max_request_pixels: int = 100_000_000
    max_in_flight: int = 64
    body_timeout_s: float = 30.0
    head_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()

    def validate(self) -> ServerConfig:
        for name in (
            "max_batch",
            "max_upload_bytes",
            "max_images_per_request",
            "max_image_pixels",
            "max_queue",
            "top_k",
            "max_request_pixels",
            "max_in_flight",
            "max_header_bytes",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise UserError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("body_timeout_s", "head_timeout_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise UserError("the API key must be at least 8 characters")
        if not 0.0 <= self.min_score <= 1.0:
            raise UserError(f"min_score must be in [0, 1], got {self.min_score}")
        return self


# ---------------------------------------------------------------------------------------------- schema
class ClassScore(BaseModel):
    class_id: int
    label: str
    score: float = Field(description="softmax probability")


class DetectedBox(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of the uploaded image")
    class_id: int
    label: str
    score: float
    description: str | None = None
    description_score: float | None = None


class Prediction(BaseModel):
    index: int = Field(description="position of the image in the request")
    filename: str | None = None
    width: int
    height: int
    top_k: list[ClassScore] | None = Field(default=None, description="classification: best classes first")
    boxes: list[DetectedBox] | None = Field(default=None, description="detection: best boxes first")


class PredictResponse(BaseModel):
    task: str
    model: str
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    error: str
    message: str


class ErrorResponse(BaseModel):
    detail: ErrorDetail


def http_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> HTTPException:
    return HTTPException(
        status_code=status, detail={"error": code, "message": message, **extra}, headers=headers
    )


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"detail": {"error": code, "message": message}}


# ---------------------------------------------------------------------------------------------- metrics
class ServerMetrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "transferkit_requests",
            "HTTP requests by route and status",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "transferkit_request_duration_seconds",
            "HTTP request latency",
            ["method", "path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "transferkit_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.inference = Histogram(
            "transferkit_inference_duration_seconds",
            "Forward-pass time per batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.images = Counter("transferkit_images", "Images run through the model", registry=self.registry)
        self.disconnects = Counter(
            "transferkit_client_disconnects", "Clients that went away before their request was read",
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "transferkit_queue_depth", "Images waiting for a batch", registry=self.registry
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and observes their latency by route template (pure ASGI: no per-request task)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)


class ApiKeyMiddleware:
    """Every route but ``/health`` needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (pure ASGI,
    compared in constant time); 401 otherwise."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        import hmac

        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key") or b""
        auth = headers.get(b"authorization") or b""
        if auth.lower().startswith(b"bearer "):
            given = auth[7:].strip()
        if hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            status_code=401,
            content=error_body(
                "unauthorized", "send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'"
            ),
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def guarded_protocol(head_timeout_s: float, max_head_bytes: int) -> type:
    """Uvicorn's HTTP protocol (httptools' C parser when installed, as ``uvicorn[standard]`` has it; h11
    otherwise) with two guards on every request head, which uvicorn does not offer (its ``timeout_keep_alive``
    only covers idle connections; its header limit is h11's alone):

    - a connection that has not sent a complete request line and headers ``head_timeout_s`` after connecting
      (or after its previous response) is closed, so clients trickling partial headers (slowloris) cannot hold
      connections open;
    - a head still incomplete after ``max_head_bytes`` gets ``431 Request Header Fields Too Large`` and the
      connection is closed.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # no httptools: the pure-Python h11 parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class GuardedProtocol(Base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                log.debug("closing %s: no complete request head within %.0f s", self.client, head_timeout_s)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            waiting = self._waiting_for_head()
            if waiting:
                self._arm()
                self._head_bytes += len(data)
            super().data_received(data)
            if not self._waiting_for_head():
                self._disarm()
                self._head_bytes = 0
            elif waiting and self._head_bytes > max_head_bytes and not self.transport.is_closing():
                body = f"request head over {max_head_bytes // 1024} KiB".encode()
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedProtocol


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one forward pass each.

    ``predict(batch (B, 3, S, S)) -> {name: (B, ...)}`` runs in a dedicated worker thread. A batch closes when
    it holds ``max_batch`` images or ``max_wait_ms`` passed since its first image arrived; images already
    queued when a forward pass ends go straight into the next batch.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], dict[str, np.ndarray]],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self.batches = 0
        self.images = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (idempotent)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = self._executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="transferkit-infer"
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="transferkit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Queue ``images`` (each one input of ``predict``: an ``(S, S, 3)`` uint8 array for the app); returns their
        output rows, in order."""
        if not self.running:
            self.start()
        assert self._queue is not None
        if self._queue.qsize() + len(images) > self.max_queue:
            raise http_error(503, "busy", f"{self._queue.qsize()} images are waiting; retry shortly")
        loop = asyncio.get_running_loop()
        items = [_Item(img, loop.create_future()) for img in images]
        for item in items:
            self._queue.put_nowait(item)
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._queue.qsize())
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [it for it in batch if not it.future.done()]  # requests cancelled while queued
            if self.metrics is not None:
                self.metrics.queue_depth.set(self.depth)
            if not batch:
                continue
            x = np.stack([it.image for it in batch])
            t0 = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.predict, x)
            except Exception as e:  # a failing forward fails its own requests, never the server
                log.exception("forward pass on a batch of %d failed", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            if self.metrics is not None:
                self.metrics.inference.observe(time.perf_counter() - t0)
                self.metrics.batch_size.observe(len(batch))
                self.metrics.images.inc(len(batch))
            for i, it in enumerate(batch):  # row i belongs to the i-th collected image
                if not it.future.done():
                    it.future.set_result({k: v[i] for k, v in outputs.items()})


# ---------------------------------------------------------------------------------------------- uploads
@dataclass
class Upload:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes, announced or actually sent, and (408)
    one that takes longer than ``timeout_s`` to arrive; a client that disconnects is counted, not logged as an
    error (499)."""
    announced = request.headers.get("content-length")
    if announced is not None:
        try:
            size = int(announced)
        except ValueError:
            raise http_error(
                400, "bad_content_length", f"Content-Length '{announced}' is not a number"
            ) from None
        if size > limit:
            raise http_error(
                413,
                "too_large",
                f"request body of {size} bytes exceeds the limit of {limit} bytes",
                limit_bytes=limit,
            )
    from starlette.requests import ClientDisconnect

    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise http_error(
                        413,
                        "too_large",
                        f"request body exceeds the limit of {limit} bytes",
                        limit_bytes=limit,
                    )
    except ClientDisconnect:  # a normal event: the client went away mid-upload
        log.debug("client %s disconnected during its upload", request.client)
        request.app.state.metrics.disconnects.inc()
        raise http_error(
            499, "client_disconnected", "the client closed the connection during the upload"
        ) from None
    except TimeoutError:
        raise http_error(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s; send it faster"
        ) from None
    return bytes(body)


def _decode_header_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def parse_multipart(body: bytes, content_type: str, max_files: int, max_fields: int = 100) -> list[Upload]:
    """The file parts of a ``multipart/form-data`` body already in memory (plain fields carry no image and are
    skipped), or a 400 / 415 naming the problem.

    python-multipart's parser with callbacks that keep each part in memory: Starlette's form parser would spool
    every file part through a temporary file, which costs more than decoding a small image (the body is
    already bounded by ``max_upload_bytes``)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise http_error(400, "bad_multipart", "malformed multipart body: the content type names no boundary")
    uploads: list[Upload] = []
    counts = {"files": 0, "fields": 0}
    part: dict[str, Any] = {}
    header = [b"", b""]

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray(), open=True)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header[0].lower()] = header[1]
        header[0] = header[1] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"name" not in options:
            raise FormParserError('the Content-Disposition header field "name" must be provided')
        kind = "files" if b"filename" in options else "fields"
        counts[kind] += 1
        if counts[kind] > (max_files if kind == "files" else max_fields):
            raise FormParserError(
                f"too many {kind} (the limit is {max_files if kind == 'files' else max_fields})"
            )
        part["filename"] = _decode_header_text(options[b"filename"]) if kind == "files" else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["data"] += memoryview(data)[start:end]

    def on_part_end() -> None:
        part["open"] = False
        if part.get("filename") is None:
            return  # a plain form field
        ctype = _decode_header_text(part["headers"].get(b"content-type", b"")).split(";")[0].strip().lower()
        if ctype and not ctype.startswith(IMAGE_PART_TYPES):
            raise http_error(
                415,
                "unsupported_media_type",
                f"file part '{part['filename']}' has content type '{ctype}'; upload images (image/png, "
                "image/jpeg, ...)",
                filename=part["filename"],
            )
        uploads.append(Upload(bytes(part["data"]), part["filename"], ctype or None))

    callbacks = dict(
        on_part_begin=on_part_begin, on_header_field=on_header_field, on_header_value=on_header_value,
        on_header_end=on_header_end, on_headers_finished=on_headers_finished, on_part_data=on_part_data,
        on_part_end=on_part_end,
    )  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
        if part.get("open"):
            raise FormParserError("the body ends inside a part (a truncated upload?)")
    except FormParserError as e:
        raise http_error(400, "bad_multipart", f"malformed multipart body: {e}") from None
    return uploads


def _b64(value: Any, index: int) -> Upload:
    filename = None
    if isinstance(value, dict):
        filename = value.get("filename")
        value = value.get("data")
    if not isinstance(value, str):
        raise http_error(
            400, "bad_json", f"image {index} must be a base64 string (or {{'data': ...}})", index=index
        )
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise http_error(
                400, "bad_base64", f"image {index}: only base64 data URLs are accepted", index=index
            )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise http_error(400, "bad_base64", f"image {index} is not valid base64", index=index) from None
    return Upload(data, filename)


def _json(body: bytes) -> list[Upload]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise http_error(400, "bad_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise http_error(400, "bad_json", "request body is JSON nested too deeply") from None
    if isinstance(payload, dict) and "images" in payload and isinstance(payload["images"], list):
        items = payload["images"]
    elif isinstance(payload, dict) and "image" in payload:
        items = [payload["image"]]
    else:
        raise http_error(400, "bad_json", 'send {"images": ["<base64>", ...]} or {"image": "<base64>"}')
    return [_b64(v, i) for i, v in enumerate(items)]


async def read_uploads(request: Request, cfg: ServerConfig) -> list[Upload]:
    """The images of a ``/predict`` request (multipart parts, base64 JSON or a raw image body)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accepted = ("multipart/form-data", "application/json")
    if ctype not in accepted and not ctype.startswith(IMAGE_PART_TYPES):
        raise http_error(
            415,
            "unsupported_media_type",
            f"content type '{ctype or '(none)'}' is not accepted; send multipart/form-data files, "
            'application/json {"images": [base64, ...]} or a raw image/* body',
        )
    body = await read_body(request, cfg.max_upload_bytes, cfg.body_timeout_s)
    if ctype == "multipart/form-data":
        uploads = parse_multipart(
            body, request.headers.get("content-type", ""), cfg.max_images_per_request + 1
        )
    elif ctype == "application/json":
        uploads = _json(body)
    else:
        uploads = [Upload(body, None, ctype)]
    if not uploads:
        raise http_error(
            400, "no_image", "the request holds no image; send at least one file or base64 image"
        )
    if len(uploads) > cfg.max_images_per_request:
        raise http_error(
            400,
            "too_many_images",
            f"{len(uploads)} images in one request; the limit is {cfg.max_images_per_request}",
        )
    return uploads


def _image_error(upload: Upload, index: int, e: Exception) -> HTTPException:
    where = {"index": index, "filename": upload.filename}
    name = f"image {index}" + (f" ('{upload.filename}')" if upload.filename else "")
    if isinstance(e, HTTPException):
        return e
    if isinstance(e, UnidentifiedImageError):
        return http_error(422, "not_an_image", f"{name} is not an image PIL can read", **where)
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return http_error(413, "too_many_pixels", f"{name}: {e}", **where)
    # PIL raises OSError, SyntaxError, ValueError, struct.error... on truncated or corrupt data
    return http_error(
        422, "corrupt_image", f"{name} could not be decoded (truncated or corrupt: {e})", **where
    )


def open_image(upload: Upload, index: int, max_pixels: int) -> Image.Image:
    """Open an upload lazily (header only) and check its pixel count, or raise a 4xx naming the problem."""
    if not upload.data:
        name = f"image {index}" + (f" ('{upload.filename}')" if upload.filename else "")
        raise http_error(
            422, "empty_image", f"{name} is empty (0 bytes)", index=index, filename=upload.filename
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(upload.data))
    except Exception as e:
        raise _image_error(upload, index, e) from None
    if image.width * image.height > max_pixels:
        raise http_error(
            413,
            "too_many_pixels",
            f"image {index} is {image.width}x{image.height}, over the limit of {max_pixels} pixels",
            index=index,
            filename=upload.filename,
        )
    return image


def load_image(image: Image.Image, upload: Upload, index: int) -> Image.Image:
    """Decode every pixel of a lazily opened image (truncated files fail here), or raise a 4xx."""
    try:
        image.load()
    except Exception as e:
        raise _image_error(upload, index, e) from None
    return image


def decode_image(upload: Upload, index: int, max_pixels: int) -> Image.Image:
    """Fully decode an upload with PIL, or raise a 4xx naming the image and the problem."""
    return load_image(open_image(upload, index, max_pixels), upload, index)


# ---------------------------------------------------------------------------------------------- the app
def create_app(
    artifact: Artifact | str | Path,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_bytes: int = 10 * 2**20,
    *,
    max_images_per_request: int = 64,
    max_image_pixels: int = 40_000_000,
    max_queue: int = 4096,
    top_k: int = 5,
    min_score: float = 0.5,
    variant: str = "fp32",
    threads: int | None = None,
    max_request_pixels: int = 100_000_000,
    max_in_flight: int = 64,
    body_timeout_s: float = 30.0,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] | list[str] = (),
) -> FastAPI:
    """The FastAPI app serving ``artifact`` (an :class:`Artifact` or an artifact directory).

    The batcher starts with the app's lifespan (or on the first request when the app runs without one).
    ``api_key``: every route but ``/health`` (the docs included) then needs ``Authorization: Bearer <key>``
    or ``X-API-Key: <key>`` (401 otherwise). ``cors_origins``: origins allowed by CORS (none by default).
    """
    cfg = ServerConfig(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_bytes=max_upload_bytes,
        max_images_per_request=max_images_per_request,
        max_image_pixels=max_image_pixels,
        max_queue=max_queue,
        top_k=top_k,
        min_score=min_score,
        max_request_pixels=max_request_pixels,
        max_in_flight=max_in_flight,
        body_timeout_s=body_timeout_s,
        api_key=api_key,
        cors_origins=tuple(cors_origins),
    ).validate()
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact, variant=variant, threads=threads)
    metrics = ServerMetrics()
    # images wait as uint8 and become float32 once per batch, on the inference thread
    batcher = MicroBatcher(artifact.predict_uint8, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue, metrics)
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (max_batch %d, max_wait %.1f ms)", artifact.name, cfg.max_batch, cfg.max_wait_ms)
        yield
        await batcher.stop()

    meta = artifact.metadata
    app = FastAPI(
        title="transferkit inference server",
        version=meta.versions.get("transferkit", ""),
        description=f"{meta.task} model exported from run {Path(str(meta.source.get('run', '?'))).name} ({meta.format}, "
        f"{artifact.variant}); {len(meta.class_names)} classes, {meta.preprocessing.image_size}px input.",
        lifespan=lifespan,
    )
    app.state.artifact = artifact
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.config = cfg
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])  # fmt: skip
    if cfg.api_key:
        app.add_middleware(ApiKeyMiddleware, key=cfg.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    in_flight = {"requests": 0}
    decode_slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))  # large decodes at once (memory, cores)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        ref = f"{int(time.time() * 1000):x}"
        log.exception("unhandled error %s on %s %s", ref, request.method, request.url.path)
        # the exception text stays in the server log: it may name files or internals of this machine
        return JSONResponse(
            status_code=500, content=error_body("internal", f"internal error (server log reference {ref})")
        )

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())[1:]) or "request", e.get("msg", "invalid"))
                 for e in exc.errors()]  # fmt: skip
        return JSONResponse(status_code=422, content=error_body("bad_parameter", "; ".join(parts)))

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in (
            (400, "malformed request: bad JSON/base64/multipart, no image, too many images"),
            (413, "body over max_upload_bytes, or an image over max_image_pixels"),
            (415, "request or file part content type is not an image / multipart / JSON"),
            (422, "a file is not a decodable image (not an image, truncated, empty)"),
            (503, "queue full; retry"),
        )
    }

    request_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                        },
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "byte"}}
                        },
                    }
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @app.post(
        "/predict", response_model=PredictResponse, responses=error_responses, openapi_extra=request_body
    )
    async def predict(
        request: Request,
        top_k: int | None = Query(None, ge=1, le=1000, description="classes (or boxes) per image"),
        min_score: float | None = Query(None, ge=0.0, le=1.0, description="detection: lowest box score"),
    ) -> PredictResponse:
        """Predict the images of a multipart / base64-JSON / raw-image request (see the module docs)."""
        if in_flight["requests"] >= cfg.max_in_flight:
            raise http_error(
                503, "busy", f"{cfg.max_in_flight} requests are being served; retry shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        in_flight["requests"] += 1
        try:
            return await _predict(request, top_k, min_score)
        finally:
            in_flight["requests"] -= 1

    async def _predict(request: Request, top_k: int | None, min_score: float | None) -> PredictResponse:
        uploads = await read_uploads(request, cfg)

        def prepare(image: Image.Image, i: int) -> np.ndarray:
            return artifact.preprocess_uint8(load_image(image, uploads[i], i))

        opened = [open_image(up, i, cfg.max_image_pixels) for i, up in enumerate(uploads)]
        sizes = [im.size for im in opened]
        total = sum(w * h for w, h in sizes)
        if total > cfg.max_request_pixels:  # checked from the headers, before any pixel is decoded
            raise http_error(
                413, "too_many_pixels",
                f"the request's images hold {total} pixels, over the limit of {cfg.max_request_pixels}; send "
                "fewer or smaller images per request",
            )  # fmt: skip
        arrays = []
        for i, im in enumerate(opened):
            # small images decode in well under a millisecond: a thread hop would cost more than it saves
            if im.width * im.height <= INLINE_DECODE_PIXELS:
                arrays.append(prepare(im, i))
            else:  # large ones must not block the event loop, and only a few decode at once
                async with decode_slots:
                    arrays.append(await run_in_threadpool(prepare, im, i))
            opened[i] = None  # type: ignore[call-overload]  # the decoded image is not kept: only its input array
        try:
            rows = await batcher.submit(arrays)
        except HTTPException:
            raise
        except Exception as e:
            log.exception("inference failed on a batch")
            raise http_error(
                500, "inference_failed", "the model failed on this batch (see the server log)"
            ) from e
        outputs = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        results = artifact.postprocess(
            outputs, sizes, top_k or cfg.top_k, cfg.min_score if min_score is None else min_score
        )
        return PredictResponse(
            task=meta.task,
            model=artifact.name,
            predictions=[
                Prediction(index=i, filename=up.filename, width=w, height=h, **res)
                for i, (up, (w, h), res) in enumerate(zip(uploads, sizes, results))
            ],
        )

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        """200 while the batcher runs (or has not started yet), 503 when it died."""
        dead = batcher._task is not None and batcher._task.done()
        body = {
            "status": "unhealthy" if dead else "ok",
            "model": artifact.name,
            "queue_depth": batcher.depth,
            "batches": batcher.batches,
            "images": batcher.images,
            "uptime_s": round(time.time() - started, 1),
        }
        return JSONResponse(body, status_code=503 if dead else 200)

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The artifact's metadata.json (without this machine's paths and package versions) and the server's
        settings (without the API key)."""
        public = meta.to_dict()
        public.pop("versions", None)
        public["source"] = {k: (Path(v).name if k in ("run", "checkpoint") and isinstance(v, str) else v)
                            for k, v in (public.get("source") or {}).items() if k != "path"}  # fmt: skip
        bb = public.get("backbone") or {}
        if (
            isinstance(bb.get("name"), str) and Path(bb["name"]).is_absolute()
        ):  # a local folder of this machine
            bb["name"] = Path(bb["name"]).name
        settings = {k: v for k, v in asdict(cfg).items() if k != "api_key"}
        return {"artifact": public, "variant": artifact.variant, "server": settings}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this server's metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST

        metrics.queue_depth.set(batcher.depth)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
