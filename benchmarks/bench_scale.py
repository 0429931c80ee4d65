"""Memory and time as the number of images grows: extraction into the cache, the streaming probe grid and the
block-wise kNN, each N in its own process (peak resident memory is the process's own).

    python benchmarks/bench_scale.py [--sizes 10000 50000 200000] [--backbone vit-micro] [--devices 1]
    python benchmarks/bench_scale.py --sizes 10000 --compare_devices   # extraction with 1 vs 2 processes

Images are generated on the fly (a seeded random 32 px image per index, 10 classes): no image folder is held.
Prints per N: peak anonymous memory (what the process holds; pages of the memory-mapped cache it has read are
file-backed page cache the kernel reclaims, counted in RSS too and shown beside it), extraction seconds per 1,000
images, grid and kNN seconds, and the ratios against the smallest N measured in the same run (targets: memory
within 1.2x, time per image within 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, threading, time
import numpy as np, torch

peak_anon = [0]


def sample():  # anonymous memory only: mapped cache pages are file-backed and reclaimable, not held memory
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.02)
from transferkit.probe.cache import get_features
from transferkit.probe.knn import knn_evaluate
from transferkit.probe.linear import LinearGridConfig, feature_variants, train_linear_grid

class Images(torch.utils.data.Dataset):
    def __init__(self, n, offset):
        self.n, self.offset = n, offset
        self.targets = [(i + offset) % 10 for i in range(n)]
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.offset + i)
        return torch.rand(3, 32, 32, generator=g), self.targets[i]

class Data:
    image_size = 32
    class_names = [str(c) for c in range(10)]
    eval_batch_size = 256
    num_workers = 0
    def __init__(self, n):
        self.sizes = {"train": n, "val": 2000, "test": 2000}
        self.offsets = {"train": 0, "val": 10**9, "test": 2 * 10**9}
    def dataset(self, split):
        return Images(self.sizes[split], self.offsets[split])
    def fingerprint(self, split):
        return f"synthetic-{split}-{self.sizes[split]}"

if __name__ == "__main__":  # spawned extraction processes import this file: only the parent runs it
    threading.Thread(target=sample, daemon=True).start()
    n, backbone, cache, devices = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    dm = Data(n)
    t0 = time.perf_counter()
    fs = {s: get_features(backbone, dm, s, layers=2, pooling="cls", extra_poolings=["mean"], cache_dir=cache,
                          progress=False, devices=devices, accelerator="cpu") for s in ("train", "val", "test")}
    extract = time.perf_counter() - t0
    labels = {s: f.label_tensor() for s, f in fs.items()}
    variants = feature_variants(fs["train"], fs["val"], fs["test"], poolings=["cls", "mean"], layers=[1, 2])
    t0 = time.perf_counter()
    train_linear_grid(variants, labels, 10, LinearGridConfig(epochs=2, learning_rates=(0.01, 0.1), max_in_memory_mb=0))
    grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn = fs["train"].view("cls", 1)
    knn_evaluate(knn, fs["train"].labels, {"val": (fs["val"].view("cls", 1), fs["val"].labels)}, 10, ks=[20],
                 train_chunk_mb=16)
    knn_s = time.perf_counter() - t0
    time.sleep(0.1)
    print(json.dumps({"n": n, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "anon_mb": peak_anon[0] / 1024,
                      "extract_s": extract, "grid_s": grid, "knn_s": knn_s}))
"""


def run_child(*args: str) -> dict:
    """The measurement in a fresh process, from a file (the extraction processes Fabric spawns import it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    try:
        out = subprocess.run([sys.executable, f.name, *args], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(f.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--backbone", default="vit-micro")
    ap.add_argument(
        "--devices", type=int, default=1, help="extraction processes (Lightning Fabric ddp_spawn)"
    )
    ap.add_argument(
        "--compare_devices",
        action="store_true",
        help="instead: time extraction of the smallest N with 1 and with 2 processes (same entry)",
    )
    args = ap.parse_args()
    if args.compare_devices:
        times = {}
        for devices in (1, 2):
            with tempfile.TemporaryDirectory() as cache:
                times[devices] = run_child(str(args.sizes[0]), args.backbone, cache, str(devices))[
                    "extract_s"
                ]
            print(
                f"{devices} process(es): extraction {times[devices]:.1f} s for {args.sizes[0] + 4000:,} images"
            )
        print(
            f"2 processes / 1: {times[2] / times[1]:.2f}x the time (process start-up included; {os.cpu_count()} cpus)"
        )
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for n in args.sizes:
            row = run_child(str(n), args.backbone, cache, str(args.devices))
            rows.append(row)
            print(f"N={n:>7,}: peak anonymous memory {row['anon_mb']:6.0f} MiB (peak RSS with mapped cache pages "
                  f"{row['rss_mb']:.0f} MiB), extraction {1000 * row['extract_s'] / (n + 4000):.2f} "
                  f"s / 1k images, grid {row['grid_s']:.1f} s, kNN {row['knn_s']:.1f} s", flush=True)  # fmt: skip
    base = rows[0]
    per_image = lambda r: r["extract_s"] / (r["n"] + 4000)  # noqa: E731
    for r in rows[1:]:
        print(f"N={r['n']:,} vs {base['n']:,}: memory {r['anon_mb'] / base['anon_mb']:.2f}x (target <= 1.2x; "
              f"RSS with mapped pages {r['rss_mb'] / base['rss_mb']:.2f}x), "
              f"extraction time per image {per_image(r) / per_image(base):.2f}x (target <= 1.3x), "
              f"grid time per image {r['grid_s'] / r['n'] / (base['grid_s'] / base['n']):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
