"""``transferkit serve``: one smoke test of the real uvicorn server on 127.0.0.1, and argument errors."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.cli import main
from transferkit.deploy.export import export_run
from transferkit.runs import LoadedRun, RunDir
from transferkit.tasks.classification import ImageClassifier

DIGITS_DATA = {
    "class_path": "transferkit.data.ImageClassificationDataModule",
    "init_args": {"source": "digits", "image_size": 32},
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A TorchScript artifact of an (untrained) vit-micro classifier on 32px digits: serving needs no training."""
    torch.manual_seed(0)
    module = ImageClassifier(
        backbone={"name": "vit-micro", "pretrained": False}, num_classes=10, image_size=32
    )
    module.configure_model()
    module.eval()
    tmp = tmp_path_factory.mktemp("serve")
    config = {"model": {"class_path": "transferkit.tasks.ImageClassifier"}, "data": DIGITS_DATA}
    loaded = LoadedRun(RunDir(tmp), tmp / "none.ckpt", module, config)
    return export_run(None, tmp / "ts", "torchscript", loaded=loaded).directory


@pytest.mark.slow
def test_serve_smoke_real_uvicorn(artifact, tmp_path, serve_process):
    args = ["--artifact", str(artifact), "--max_batch", "4", "--log_level", "warning"]
    with serve_process(args, tmp_path / "server.log") as url:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "PNG")
        r = httpx.post(f"{url}/predict", files={"f": ("zero.png", buf.getvalue(), "image/png")}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 5
        bad = httpx.post(f"{url}/predict", files={"f": ("x.png", b"nope", "image/png")}, timeout=30)
        assert bad.status_code == 422
        assert httpx.get(f"{url}/health", timeout=5).json()["images"] == 1
        assert "transferkit_batch_size_count 1.0" in httpx.get(f"{url}/metrics", timeout=5).text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--artifact", "no/such/dir"], "no artifact directory"),
        (["--port", "70000"], "--port must be"),
        (["--max_batch", "0"], "max_batch must be >= 1"),
        (["--variant", "int8"], "no int8 model"),
    ],
)
def test_serve_user_errors(artifact, args, message, capsys):
    argv = ["serve", *(["--artifact", str(artifact)] if "--artifact" not in args else []), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
