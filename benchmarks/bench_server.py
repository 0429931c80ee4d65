"""Inference-server benchmark: a real uvicorn server on 127.0.0.1 under a bounded concurrent load.

    python benchmarks/bench_server.py                       # fits + exports a MiniLM linear probe on digits first
    python benchmarks/bench_server.py --artifact runs/x/export/onnx --requests 1000 --concurrency 64

Starts ``transferkit serve`` in a subprocess on a free port of 127.0.0.1, sends ``--requests`` single-image
multipart requests (PNG-encoded test images of sklearn's digits) with at most ``--concurrency`` in flight
(aiohttp async client, or httpx with ``--client httpx``), and prints requests/s, p50/p99 latency and the
mean batch size of the server's micro-batcher (from its Prometheus /metrics), and the same load's rate on
``GET /health`` (the HTTP ceiling of this client and server with no model). Then, with the server stopped, it times the bare model forward
of the same artifact in this process at the server's mean batch size and at ``--max_batch``, and prints the
ratio server throughput / bare forward throughput (target: >= 0.8 at the same batch size).

Every request goes to 127.0.0.1 only; the load is bounded in count (``--requests``) and time (``--timeout``).
By default client and server share this machine's cores, so the client's own CPU use is part of what is
measured. ``--pin`` gives the client the last core and the server the others (``--threads`` = their count), and
times the bare forward on the server's cores with the same thread count: the ratio is then the server's own
overhead alone (on a 2-core machine the server gets one core).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_artifact(workdir: Path, backbone: str, image_size: int) -> Path:
    """A quick linear probe on digits (1 epoch, 5 batches), exported to ONNX."""
    from transferkit.cli import main

    args = [
        "fit",
        "--config",
        str(ROOT / "configs/classification/linear_probe.yaml"),
        "--model.backbone.name",
        backbone,
        "--data.image_size",
        str(image_size),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--runs_dir",
        str(workdir / "runs"),
        "--name",
        "bench",
    ]
    if main(args) != 0:
        raise SystemExit("fit failed")
    out = workdir / "artifact"
    if main(["export", "--run", str(workdir / "runs/bench"), "--format", "onnx", "--out", str(out)]) != 0:
        raise SystemExit("export failed")
    return out


def digit_pngs(n: int, size: int) -> list[bytes]:
    """``n`` PNG files of sklearn's real handwritten digits, upscaled to ``size`` px RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits().images  # (1797, 8, 8), values 0..16
    out = []
    for i in range(n):
        arr = (digits[i % len(digits)] * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


BOUNDARY = "transferkit-bench-boundary"


def multipart_body(data: bytes, filename: str) -> bytes:
    """A one-file ``multipart/form-data`` body, encoded once up front so the client spends its CPU on HTTP."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def scrape(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def drive(
    url: str,
    pngs: list[bytes],
    requests: int,
    concurrency: int,
    timeout: float,
    path: str = "/predict",
    client: str = "aiohttp",
) -> dict:
    """Send ``requests`` POST /predict (or GET ``path``) with at most ``concurrency`` in flight.

    Returns the wall time, per-request latencies (s), error counts and the server's mean batch size over the
    run (from /metrics). ``client``: ``aiohttp`` (C-accelerated HTTP parsing: the client costs less of the
    shared CPU) or ``httpx``.
    """
    bodies = [multipart_body(p, f"{i}.png") for i, p in enumerate(pngs)]
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + timeout

    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            base_url=url,
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=60),
        )

        async def send(i: int) -> int:
            if path == "/predict":
                req = session.post(path, data=bodies[i % len(bodies)], headers=headers)
            else:
                req = session.get(path)
            async with req as r:
                await r.read()
                return r.status

        async def text(p: str) -> str:
            async with session.get(p) as r:
                return await r.text()

        http_errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        session = httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0)

        async def send(i: int) -> int:
            if path == "/predict":
                r = await session.post(path, content=bodies[i % len(bodies)], headers=headers)
            else:
                r = await session.get(path)
            return r.status_code

        async def text(p: str) -> str:
            return (await session.get(p)).text

        http_errors = (httpx.HTTPError,)

    async def one(i: int) -> None:
        async with sem:
            if time.perf_counter() > deadline:
                errors["skipped (timeout)"] = errors.get("skipped (timeout)", 0) + 1
                return
            t0 = time.perf_counter()
            try:
                status = await send(i)
                key = None if status == 200 else str(status)
            except http_errors as e:
                key = type(e).__name__
            if key is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    try:
        before = await text("/metrics")
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
        after = await text("/metrics")
    finally:
        await (session.close() if client == "aiohttp" else session.aclose())
    batches = scrape(after, "transferkit_batch_size_count") - scrape(before, "transferkit_batch_size_count")
    images = scrape(after, "transferkit_batch_size_sum") - scrape(before, "transferkit_batch_size_sum")
    return {"wall_s": wall, "latencies": latencies, "errors": errors, "mean_batch": images / max(batches, 1)}


def bare_forward(art, batch_size: int, pngs: list[bytes], repeats: int) -> float:
    """Images/s of the artifact's forward alone at ``batch_size`` (median of ``repeats`` timed runs)."""
    from transferkit.deploy.quantize import measure_speed

    x = np.stack([art.preprocess(Image.open(io.BytesIO(pngs[i % len(pngs)]))) for i in range(batch_size)])
    return measure_speed(art.predict, x, repeats=repeats, warmup=3)["images_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, help="artifact directory (default: fit + export a quick run)")
    p.add_argument("--backbone", default="minilm-l6", help="backbone of the quick run when no --artifact")
    p.add_argument("--image_size", type=int, default=64, help="image size of the quick run")
    p.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--requests", type=int, default=400, help="requests per round")
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of served load, each followed by a bare forward"
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--max_wait_ms", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=300.0, help="give up sending after this many seconds")
    p.add_argument("--repeats", type=int, default=20, help="timed runs of the bare forward")
    p.add_argument("--pin", action="store_true", help="client on the last core, server on the others")
    p.add_argument(
        "--client", default=None, choices=["aiohttp", "httpx"], help="default: aiohttp when installed"
    )
    args = p.parse_args()
    if args.client is None:
        try:
            import aiohttp  # noqa: F401

            args.client = "aiohttp"
        except ImportError:
            args.client = "httpx"

    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        artifact = args.artifact or make_artifact(Path(tmp), args.backbone, args.image_size)
        from transferkit.deploy.artifact import read_metadata

        meta = read_metadata(artifact)
        pngs = digit_pngs(256, meta.preprocessing.image_size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "transferkit.cli",
            "serve",
            "--artifact",
            str(artifact),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max_batch",
            str(args.max_batch),
            "--max_wait_ms",
            str(args.max_wait_ms),
            "--variant",
            args.variant,
            "--log_level",
            "warning",
        ]
        cores = sorted(os.sched_getaffinity(0))
        server_cores, client_cores = (
            (cores[:-1], cores[-1:]) if args.pin and len(cores) > 1 else (cores, cores)
        )
        threads = len(server_cores) if args.pin else None
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        server = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, server_cores)) if args.pin else None,
        )  # fmt: skip
        os.sched_setaffinity(0, client_cores)
        try:
            t0 = time.time()
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() - t0 > 120:
                    raise SystemExit("server did not become healthy within 120 s")
                time.sleep(0.2)
            from transferkit.deploy.artifact import load_artifact

            art = load_artifact(
                artifact, args.variant, threads=threads
            )  # for the bare forward, in this process
            load = (args.concurrency, args.timeout)
            asyncio.run(drive(url, pngs, 2 * args.concurrency, *load, client=args.client))  # warm-up
            # rounds alternate the served load and the bare forward (server idle), so each ratio compares two
            # measurements taken moments apart on this shared machine
            rounds = []
            for _ in range(args.rounds):
                res = asyncio.run(drive(url, pngs, args.requests, *load, client=args.client))
                if not res["latencies"]:
                    raise SystemExit(f"no request succeeded: {res['errors']}")
                at = max(1, int(round(res["mean_batch"])))
                res["bare_batch"] = at
                os.sched_setaffinity(0, server_cores)  # the bare forward on the server's cores
                res["bare"] = bare_forward(art, at, pngs, args.repeats)
                os.sched_setaffinity(0, client_cores)
                res["rps"] = len(res["latencies"]) / res["wall_s"]
                rounds.append(res)
            os.sched_setaffinity(0, server_cores)
            bare_max = bare_forward(art, args.max_batch, pngs, args.repeats)
            os.sched_setaffinity(0, client_cores)
            # the same load on GET /health (no model, no upload): the HTTP ceiling of this client + server
            ceiling = asyncio.run(drive(url, pngs, args.requests, *load, path="/health", client=args.client))
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    lat = sorted(x for r in rounds for x in r["latencies"])
    p50 = 1e3 * statistics.median(lat)
    p99 = 1e3 * lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ratios = [r["rps"] / r["bare"] for r in rounds]
    med = statistics.median
    print(
        f"artifact: {meta.backbone.get('name')} {meta.format} {args.variant}, {meta.preprocessing.image_size}px, "
        f"{os.cpu_count()} CPUs; server max_batch {args.max_batch}, max_wait {args.max_wait_ms} ms; "
        + (
            f"pinned: server on cores {server_cores} ({threads} threads), client on {client_cores}"
            if args.pin
            else "client and server share the cores"
        )
    )
    print(
        f"load: {args.rounds} rounds x {args.requests} requests (1 image each), {args.concurrency} concurrent, "
        f"{args.client} async client, 127.0.0.1"
    )
    print(f"{'round':<8}{'req/s':>10}{'mean batch':>12}{'bare img/s':>12}{'ratio':>8}")
    for i, r in enumerate(rounds):
        print(f"{i + 1:<8}{r['rps']:>10.1f}{r['mean_batch']:>12.2f}{r['bare']:>12.1f}{ratios[i]:>8.2f}")
    print(
        f"{'server throughput (median)':<34}{med([r['rps'] for r in rounds]):10.1f} req/s   (errors: {errors or 'none'})"
    )
    print(f"{'latency p50 / p99':<34}{p50:10.1f} / {p99:.1f} ms")
    print(f"{'mean batch size (median)':<34}{med([r['mean_batch'] for r in rounds]):10.2f}")
    print(f"{'HTTP ceiling (GET /health)':<34}{len(ceiling['latencies']) / ceiling['wall_s']:10.1f} req/s")
    print(f"{'bare forward, same batch (median)':<34}{med([r['bare'] for r in rounds]):10.1f} img/s")
    print(f"{f'bare forward at batch {args.max_batch}':<34}{bare_max:10.1f} img/s")
    ratio = med(ratios)
    verdict = "met" if ratio >= 0.8 else "NOT met"
    print(f"{'server / bare forward (median)':<34}{ratio:10.2f}   (target >= 0.80: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
