"""Fixtures shared by several test folders: one torch thread, the tiny Qwen2.5-VL, a tiny grounding set, a real
`transferkit serve` process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from transferkit.data.detection.shapes import ShapesConfig, make_shapes
from transferkit.utils.devices import intra_op_threads
from transferkit.vlm.tiny import ensure_tiny_qwen2_5_vl


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models only lose to thread hand-offs on a shared 2-core machine."""
    with intra_op_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """The tiny random-init Qwen2.5-VL folder, built once per session."""
    return ensure_tiny_qwen2_5_vl(tmp_path_factory.getbasetemp() / "vlm-models")


@pytest.fixture(scope="module")
def grounding_shapes(tmp_path_factory) -> Path:
    """A 12-image shapes set as grounding JSONL (``{train,val,test}.jsonl``), at most 2 objects per image."""
    out = tmp_path_factory.mktemp("grounding-shapes")
    make_shapes(
        out,
        ShapesConfig(n=12, min_size=32, max_size=48, max_objects=2, val_fraction=0.25, test_fraction=0.25),
    )
    return out


@contextlib.contextmanager
def _serve(args: list[str], log_file: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``transferkit serve ARGS`` on a free port of 127.0.0.1, its output in ``log_file`` (a pipe could fill up
    and block it); yields the URL once ``/health`` answers and stops the server even when starting it fails."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "transferkit.cli", "serve", *args, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            deadline = time.time() + 120
            while True:
                assert proc.poll() is None, log_file.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, "server did not start within 120 s"
                time.sleep(0.25)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def serve_process():
    """The context manager :func:`_serve`: ``with serve_process(args, log_file, env) as url: ...``."""
    return _serve
