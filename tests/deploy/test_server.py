"""The FastAPI inference server: endpoints, bad uploads, micro-batching without cross-talk."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from transferkit.deploy.artifact import load_artifact
from transferkit.deploy.server import MicroBatcher, create_app


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    """40 distinct real handwritten digits (sklearn), as 32px RGB PNG files."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for i in range(40):
        arr = (d.images[i] * (255 / 16)).astype(np.uint8)
        out.append(png(np.asarray(Image.fromarray(arr).resize((32, 32)).convert("RGB"))))
    return out


@pytest.fixture(scope="module")
def artifact(onnx_export):
    return load_artifact(onnx_export.directory)


@pytest.fixture(scope="module")
def client(artifact):
    app = create_app(artifact, max_batch=8, max_wait_ms=2, max_upload_bytes=50_000, max_images_per_request=4)
    with TestClient(app) as c:
        yield c


def expected(artifact, data: bytes) -> np.ndarray:
    """Softmax probabilities of the artifact run directly (no server) on one image."""
    x = artifact.preprocess(Image.open(io.BytesIO(data)))[None]
    logits = artifact.predict(x)["logits"][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def check_prediction(pred: dict, probs: np.ndarray, top_k: int = 5) -> None:
    order = np.argsort(-probs)[:top_k]
    assert [p["class_id"] for p in pred["top_k"]] == order.tolist()
    np.testing.assert_allclose([p["score"] for p in pred["top_k"]], probs[order], rtol=1e-4, atol=1e-6)


def test_health_metadata_docs(client):
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["artifact"]["class_names"] == [str(i) for i in range(10)]
    assert meta["artifact"]["parity"]["passed"] is True
    assert meta["server"]["max_batch"] == 8 and meta["variant"] == "fp32"
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "multipart/form-data" in str(schema["paths"]["/predict"])
    assert client.get("/docs").status_code == 200


def test_predict_multipart_json_and_raw(client, artifact, digit_pngs):
    a, b = digit_pngs[0], digit_pngs[1]
    r = client.post(
        "/predict", files=[("files", ("a.png", a, "image/png")), ("files", ("b.png", b, "image/png"))]
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "classification" and body["model"] == "tiny (onnx, fp32)"
    preds = body["predictions"]
    assert [p["filename"] for p in preds] == ["a.png", "b.png"] and [p["index"] for p in preds] == [0, 1]
    assert preds[0]["width"] == 32 and preds[0]["boxes"] is None
    check_prediction(preds[0], expected(artifact, a))
    check_prediction(preds[1], expected(artifact, b))

    r = client.post("/predict?top_k=2", json={"images": [base64.b64encode(b).decode()]})
    assert r.status_code == 200
    check_prediction(r.json()["predictions"][0], expected(artifact, b), top_k=2)

    data_url = "data:image/png;base64," + base64.b64encode(a).decode()
    r = client.post("/predict", json={"image": {"data": data_url, "filename": "x.png"}})
    assert r.status_code == 200 and r.json()["predictions"][0]["filename"] == "x.png"
    check_prediction(r.json()["predictions"][0], expected(artifact, a))

    r = client.post("/predict", content=a, headers={"content-type": "image/png"})
    assert r.status_code == 200
    check_prediction(r.json()["predictions"][0], expected(artifact, a))


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "text file part": (
        415,
        "unsupported_media_type",
        dict(files={"f": ("notes.txt", b"hello", "text/plain")}),
    ),
    "not an image": (422, "not_an_image", dict(files={"f": ("a.png", b"this is not a png", "image/png")})),
    "truncated png": (422, "corrupt_image", None),
    "empty file": (422, "empty_image", dict(files={"f": ("a.png", b"", "image/png")})),
    "oversized upload": (
        413,
        "too_large",
        dict(files={"f": ("a.png", b"\x89PNG" + b"0" * 60_000, "image/png")}),
    ),
    "wrong content type": (
        415,
        "unsupported_media_type",
        dict(content=b"abc", headers={"content-type": "text/plain"}),
    ),
    "multipart without a boundary": (
        400,
        "bad_multipart",
        dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
    ),
    "garbage multipart": (
        400,
        "bad_multipart",
        dict(content=b"hello", headers={"content-type": "multipart/form-data; boundary=XyZ"}),
    ),
    "truncated multipart": (
        400,
        "bad_multipart",
        dict(
            content=b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG",
            headers={"content-type": "multipart/form-data; boundary=XyZ"},
        ),
    ),
    "multipart part without a name": (
        400,
        "bad_multipart",
        dict(
            content=b'--XyZ\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nxx\r\n--XyZ--\r\n',
            headers={"content-type": "multipart/form-data; boundary=XyZ"},
        ),
    ),
    "malformed json": (400, "bad_json", dict(content=b"{", headers={"content-type": "application/json"})),
    "bad base64": (400, "bad_base64", dict(json={"images": ["!!not base64!!"]})),
    "no image": (400, "no_image", dict(json={"images": []})),
    "too many images": (400, "too_many_images", dict(json={"images": ["AA=="] * 5})),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_gets_4xx_and_server_keeps_serving(case, client, artifact, digit_pngs):
    status, code, kwargs = BAD_UPLOADS[case]
    if kwargs is None:
        kwargs = dict(files={"f": ("a.png", _truncated(digit_pngs[2]), "image/png")})
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["error"] == code and detail["message"]
    good = client.post("/predict", files={"f": ("ok.png", digit_pngs[3], "image/png")})
    assert good.status_code == 200
    check_prediction(good.json()["predictions"][0], expected(artifact, digit_pngs[3]))


def test_oversized_chunked_body_is_refused_by_bytes_read(client, digit_pngs):
    """No Content-Length (chunked upload): the limit applies to the bytes actually read."""

    def chunks():
        for _ in range(20):
            yield b"0" * 4096

    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["detail"]["error"] == "too_large"
    assert (
        client.post("/predict", content=digit_pngs[0], headers={"content-type": "image/png"}).status_code
        == 200
    )


def test_image_over_pixel_limit(artifact, digit_pngs):
    app = create_app(artifact, max_image_pixels=30 * 30)
    with TestClient(app) as c:
        r = c.post("/predict", files={"f": ("big.png", png(np.zeros((40, 40, 3), np.uint8)), "image/png")})
        assert r.status_code == 413 and r.json()["detail"]["error"] == "too_many_pixels"
        assert (
            c.post(
                "/predict", files={"f": ("ok.png", png(np.zeros((20, 20, 3), np.uint8)), "image/png")}
            ).status_code
            == 200
        )


def test_metrics_count_requests_latency_and_batches(client, digit_pngs):
    client.post("/predict", files={"f": ("a.png", digit_pngs[0], "image/png")})
    client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert re.search(r'transferkit_requests_total\{method="POST",path="/predict",status="200"\} [1-9]', text)
    assert re.search(r'transferkit_requests_total\{method="POST",path="/predict",status="415"\} [1-9]', text)
    assert re.search(
        r'transferkit_request_duration_seconds_count\{method="POST",path="/predict"\} [1-9]', text
    )
    assert re.search(r"transferkit_batch_size_count [1-9]", text)
    assert re.search(r"transferkit_images_total [1-9]", text)


def test_concurrent_requests_are_batched_without_cross_talk(artifact, digit_pngs):
    """40 distinct images, 40 concurrent requests: batches form, and each answer is its own image's."""
    app = create_app(artifact, max_batch=16, max_wait_ms=20)

    async def run() -> tuple[list[httpx.Response], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(
                *(
                    c.post("/predict", files={"f": (f"{i}.png", data, "image/png")})
                    for i, data in enumerate(digit_pngs)
                )
            )
            metrics = (await c.get("/metrics")).text
        await app.state.batcher.stop()
        return rs, metrics

    responses, metrics = asyncio.run(run())
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["filename"] == f"{i}.png"
        check_prediction(pred, expected(artifact, digit_pngs[i]))
    batches = float(re.search(r"transferkit_batch_size_count (\S+)", metrics).group(1))
    images = float(re.search(r"transferkit_batch_size_sum (\S+)", metrics).group(1))
    assert images == 40 and batches < 40  # some requests shared a forward pass
    assert float(re.search(r'transferkit_batch_size_bucket\{le="16.0"\} (\S+)', metrics).group(1)) == batches


def test_micro_batcher_routes_rows_and_survives_a_failing_batch():
    seen: list[int] = []
    fail = {"next": False}

    def predict(x: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(x.shape[0])
        if fail["next"]:
            fail["next"] = False
            raise RuntimeError("boom")
        return {"id": x[:, 0, 0, 0] * 2}  # row i depends only on image i

    async def run() -> None:
        b = MicroBatcher(predict, max_batch=4, max_wait_ms=10)
        b.start()
        imgs = [np.full((3, 2, 2), i, np.float32) for i in range(10)]
        results = await asyncio.gather(*(b.submit([im]) for im in imgs), b.submit(imgs[:3]))
        for i in range(10):
            assert results[i][0]["id"] == 2 * i
        assert [r["id"] for r in results[10]] == [0, 2, 4]
        assert max(seen) <= 4 and sum(seen) == 13 and len(seen) < 13
        fail["next"] = True
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit([imgs[1]])
        assert (await b.submit([imgs[5]]))[0]["id"] == 10  # the worker survived
        await b.stop()

    asyncio.run(run())


def test_failing_forward_is_a_500_and_the_next_request_succeeds(artifact, digit_pngs):
    app = create_app(artifact)
    real = app.state.batcher.predict
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(x)

    app.state.batcher.predict = flaky
    with TestClient(app) as c:
        r = c.post("/predict", files={"f": ("a.png", digit_pngs[0], "image/png")})
        assert r.status_code == 500 and r.json()["detail"]["error"] == "inference_failed"
        assert "out of memory" not in r.text  # the exception stays in the server log
        assert c.post("/predict", files={"f": ("a.png", digit_pngs[0], "image/png")}).status_code == 200
        assert c.get("/health").json()["status"] == "ok"


def test_requests_beyond_the_in_flight_limit_get_503_with_retry_after(artifact, digit_pngs):
    app = create_app(artifact, max_in_flight=1, max_wait_ms=200.0)  # the first request waits for company

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            app.state.batcher.start()
            try:
                first = asyncio.create_task(
                    client.post("/predict", files={"f": ("a.png", digit_pngs[0], "image/png")})
                )
                await asyncio.sleep(0.05)
                second = await client.post("/predict", files={"f": ("b.png", digit_pngs[1], "image/png")})
                return [await first, second]
            finally:
                await app.state.batcher.stop()

    first, second = asyncio.run(run())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.json()["detail"]["error"] == "busy"


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(artifact):
    big = png(np.zeros((300, 300, 3), np.uint8))
    with TestClient(create_app(artifact, max_request_pixels=200_000)) as c:
        files = [("f", (f"{i}.png", big, "image/png")) for i in range(3)]  # 3 x 90,000 pixels
        r = c.post("/predict", files=files)
        assert r.status_code == 413 and "270000 pixels" in r.json()["detail"]["message"]
        assert c.post("/predict", files=files[:2]).status_code == 200


@pytest.mark.slow
def test_detection_artifact_serves_boxes_in_image_pixels(tmp_path):
    """A DETR-style detection task exports (outputs found by name) and the server returns its boxes."""
    detection = pytest.importorskip("transferkit.tasks.detection")
    from transferkit.deploy.export import export_run
    from transferkit.heads.detr import postprocess
    from transferkit.runs import LoadedRun, RunDir

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    decoder = {
        "hidden_dim": 32,
        "num_queries": 5,
        "num_layers": 1,
        "nhead": 2,
        "dim_feedforward": 64,
        "dropout": 0.0,
    }
    task = detection.DetectionTask(
        backbone={"name": "convnet-micro", "pretrained": False},
        feature_layers=[1, 2],
        decoder=decoder,
        class_names=["circle", "square"],
        desc_vocab=["red circle", "blue square"],
        image_size=32,
    )
    task.configure_model()
    task.eval()
    cls = "transferkit.tasks.detection.DetectionTask"
    loaded = LoadedRun(RunDir(tmp_path), tmp_path / "none.ckpt", task, {"model": {"class_path": cls}})
    res = export_run(None, tmp_path / "ts", "torchscript", loaded=loaded)
    assert res.passed and res.metadata.task == "detection"
    assert res.metadata.output_names == ["pred_logits", "pred_boxes", "pred_objectness", "pred_desc_logits"]
    assert res.metadata.preprocessing.resize == "square"

    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)  # H=60, W=90
    with TestClient(create_app(tmp_path / "ts", top_k=3, min_score=0.0)) as c:
        r = c.post("/predict", files={"f": ("x.png", png(image), "image/png")})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["top_k"] is None and len(pred["boxes"]) == 3
    # the same boxes as the eager task decoded by the detection head's own postprocess
    x = torch.from_numpy(load_artifact(tmp_path / "ts").preprocess(Image.fromarray(image)))[None]
    with torch.no_grad():
        ref = postprocess(task(x), torch.tensor([[60, 90]]), "class")[0]
    np.testing.assert_allclose([b["box"] for b in pred["boxes"]], ref["boxes"][:3].numpy(), atol=0.02)
    assert [b["label"] for b in pred["boxes"]] == [
        ["circle", "square"][i] for i in ref["labels"][:3].tolist()
    ]
    assert all(b["description"] in ("red circle", "blue square") for b in pred["boxes"])
