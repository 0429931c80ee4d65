"""The server against hostile and unlucky clients, on a real uvicorn on 127.0.0.1: disconnects mid-upload,
nested JSON, slow heads and bodies, huge headers, the API key, and a bounded load test with bad uploads mixed
in (no 5xx for good requests, the same answers as solo requests)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

KEY = "s3cret-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(onnx_export, tmp_path_factory, serve_process):
    """``transferkit serve`` of the tiny ONNX artifact with an API key and short timeouts; yields its URL."""
    args = ["--artifact", str(onnx_export.directory), "--log_level", "warning", "--head_timeout_s", "1",
            "--body_timeout_s", "1", "--api_key", KEY]  # fmt: skip
    log_file = tmp_path_factory.mktemp("server") / "server.log"  # the server's output, read by the tests
    with serve_process(args, log_file, {"OMP_NUM_THREADS": "1"}) as url:
        yield url, log_file


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _five_hundreds(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=5).text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
               if x.startswith("transferkit_requests_total") and 'status="5' in x)  # fmt: skip


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def test_api_key_guards_everything_but_health(server):
    url, _ = server
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.head(f"{url}/health").status_code == 200
    for path in ("/metadata", "/metrics", "/docs", "/openapi.json"):
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 401 and r.json()["detail"]["error"] == "unauthorized", path
    assert httpx.get(f"{url}/metadata", headers={"X-API-Key": "wrong-key-123"}).status_code == 401
    assert httpx.get(f"{url}/metadata", headers={"X-API-Key": KEY}).status_code == 200


def test_metadata_and_errors_say_nothing_of_this_machine(server, onnx_export):
    url, _ = server
    text = httpx.get(f"{url}/metadata", headers=AUTH).text
    assert str(onnx_export.directory.parent) not in text and "/tmp/" not in text
    assert "versions" not in json.loads(text)["artifact"] and KEY not in text
    r = httpx.post(f"{url}/predict?top_k=0", headers=AUTH, files={"f": ("a.png", png(0), "image/png")})
    assert (
        r.status_code == 422
        and r.json()["detail"]["error"] == "bad_parameter"
        and "top_k" in r.json()["detail"]["message"]
    )


def test_a_client_disconnecting_mid_upload_is_counted_not_a_500(server):
    url, log_file = server
    before, errors_before = _metric(url, "transferkit_client_disconnects_total"), _five_hundreds(url)
    for _ in range(3):
        s = _raw(url)
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: image/png\r\n"
                  "Content-Length: 100000\r\n\r\n".encode() + png(1)[:100])  # fmt: skip
        time.sleep(0.2)
        s.close()
    deadline = time.time() + 10
    while _metric(url, "transferkit_client_disconnects_total") < before + 3 and time.time() < deadline:
        time.sleep(0.1)
    assert _metric(url, "transferkit_client_disconnects_total") == before + 3
    assert _five_hundreds(url) == errors_before
    assert (
        httpx.post(f"{url}/predict", headers=AUTH, files={"f": ("a.png", png(2), "image/png")}).status_code
        == 200
    )


def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(server):
    url, _ = server
    with httpx.Client(headers=AUTH) as client:
        r = client.post(
            f"{url}/predict", content=b"[" * 200_000, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["detail"]["error"] == "bad_json"
        assert client.get(f"{url}/health").status_code == 200  # same keep-alive connection


def test_slow_heads_are_closed_slow_bodies_get_408_and_huge_headers_431(server):
    url, _ = server
    s = _raw(url)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    s.settimeout(5)
    t0 = time.time()
    assert s.recv(1024) == b"" and time.time() - t0 < 4  # closed after the 1 s head deadline
    s.close()
    s = _raw(url)
    s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: image/png\r\n"
              "Content-Length: 5000\r\n\r\n".encode() + b"x" * 10)  # fmt: skip
    s.settimeout(5)
    assert b" 408 " in s.recv(4096).split(b"\r\n")[0]
    s.close()
    s = _raw(url)  # a head that keeps growing past --max_header_kb (64 KiB) without ending
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 << 10))
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 431 ")
    s.close()
    try:  # a 1 MiB header: refused with a 431, or the connection reset while the client still sends it
        assert httpx.get(f"{url}/health", headers={"X-Big": "a" * (1 << 20)}).status_code == 431
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
        pass
    assert httpx.get(f"{url}/health").status_code == 200


def test_bounded_load_with_bad_uploads_gives_no_5xx_and_solo_answers(server):
    url, _ = server
    goods = [png(100 + i) for i in range(12)]
    with httpx.Client(headers=AUTH) as client:
        solo = [client.post(f"{url}/predict", files={"f": ("g.png", g, "image/png")}).json()["predictions"][0]
                for g in goods]  # fmt: skip
    bads = [b"", b"not an image", png(7)[:60]]
    plan = [("good", i % len(goods)) for i in range(180)] + [("bad", i % len(bads)) for i in range(20)]
    random.Random(0).shuffle(plan)
    errors_before = _five_hundreds(url)

    async def run() -> list[tuple[str, int, httpx.Response]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(headers=AUTH, limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(16)

            async def one(kind: str, i: int):
                data = goods[i] if kind == "good" else bads[i]
                async with sem:
                    return (
                        kind,
                        i,
                        await client.post(f"{url}/predict", files={"f": ("x.png", data, "image/png")}),
                    )

            return await asyncio.gather(*(one(k, i) for k, i in plan))

    t0 = time.time()
    results = asyncio.run(run())
    seconds = time.time() - t0
    good = [(i, r) for k, i, r in results if k == "good"]
    assert all(r.status_code == 200 for _, r in good), {r.status_code for _, r in good}
    assert all(400 <= r.status_code < 500 for k, _, r in results if k == "bad")
    for i, r in good:
        got = r.json()["predictions"][0]["top_k"]
        assert [c["class_id"] for c in got] == [c["class_id"] for c in solo[i]["top_k"]]
        assert np.allclose([c["score"] for c in got], [c["score"] for c in solo[i]["top_k"]], atol=1e-5)
    assert _five_hundreds(url) == errors_before
    print(f"load: {len(results)} requests (20 bad) at concurrency 16 in {seconds:.2f} s, "
          f"{len(results) / seconds:.0f} req/s, 0 5xx")  # fmt: skip
