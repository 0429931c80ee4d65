"""Benchmark of the feature cache and the one-pass linear-probe grid (prints one table).

    python benchmarks/bench_probe_cache.py                       # MiniLM on digits (64px), CPU
    python benchmarks/bench_probe_cache.py --backbone vit-tiny:random --device cuda

Figures, each against a baseline measured in the same run:

1. a 100-epoch linear probe with cached features (one backbone pass, then the heads) vs re-running the frozen
   backbone over the training set every epoch (target: >= 50x faster), for one head (the plain linear probe)
   and for the whole grid ``compare`` trains (the same heads in both arms). The backbone pass is timed over
   ``--baseline_epochs`` real passes and its mean stands for each of the baseline's epochs;
2. feature-extraction throughput of ``get_features`` (data loading, forward, writing the memory-mapped cache)
   vs a bare ``torch.inference_mode`` loop over the same model and DataLoader (target: within 5%),
   interleaved runs, median of ``--repeats``;
3. peak resident memory of each phase (sampled from /proc) and the size of the cached features.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


class PeakRSS:
    """Peak resident set size (MiB) of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: lifetime peak from getrusage
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--data", default="digits", help="data source (digits, cifar10, ...)")
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=128, help="extraction batch size")
    ap.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    ap.add_argument("--layers", type=int, default=4, help="last-k blocks for the probe grid")
    ap.add_argument(
        "--baseline_epochs", type=int, default=3, help="real backbone passes timed for the baseline"
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved throughput repeats (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from rich.table import Table

    from transferkit.backbones import resolve_backbone
    from transferkit.data import ImageClassificationDataModule
    from transferkit.data.sources import collate_drop_none
    from transferkit.probe.cache import extract_summaries, get_features
    from transferkit.probe.linear import LinearGridConfig, feature_variants, train_linear_grid
    from transferkit.utils.console import make_console

    console = make_console()
    dm = ImageClassificationDataModule(
        source=args.data, path=args.data_path, image_size=args.image_size, eval_batch_size=args.batch_size
    )
    bb = resolve_backbone(args.backbone, args.image_size)
    bb.eval().to(args.device)
    layers = min(args.layers, bb.num_blocks)
    poolings = list(dict.fromkeys([bb.pooling, "mean"]))
    n_train = len(dm.dataset("train"))
    console.print(
        f"{args.backbone}: {bb.num_params() / 1e6:.1f}M params on {args.data} ({n_train} train images, "
        f"{args.image_size}px), device {args.device}, torch threads {torch.get_num_threads()}"
    )
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        # ---------------------------------------------------------------- 1. probe with cache vs re-running
        with PeakRSS() as mem_extract:
            feats = {
                s: get_features(
                    bb,
                    dm,
                    s,
                    layers=layers,
                    pooling=poolings[0],
                    extra_poolings=poolings[1:],
                    cache_dir=cache,
                    device=args.device,
                    progress=False,
                )  # fmt: skip
                for s in ("train", "val", "test")
            }
        variants = feature_variants(
            feats["train"], feats["val"], feats["test"], poolings=poolings, layers=[1, layers]
        )
        labels = {s: fs.label_tensor() for s, fs in feats.items()}
        with PeakRSS() as mem_probe:
            grid = train_linear_grid(
                variants, labels, dm.num_classes, LinearGridConfig(epochs=args.epochs), device=args.device
            )
        t_grid = grid.seconds
        # the plain linear probe: one head (default pooling, final block, LR 0.1)
        single = [v for v in variants if v.info["pooling"] == poolings[0] and v.info["layers"] == 1]
        one = train_linear_grid(
            single,
            labels,
            dm.num_classes,
            LinearGridConfig(learning_rates=(0.1,), epochs=args.epochs),
            device=args.device,
        )
        # baseline: the same backbone pass over the training set, once per epoch (timed over real passes)
        train_ds = dm.dataset("train")
        summaries = ["cls", "mean"] if "cls" in poolings else ["mean", "last"]
        passes = {"final": [], "grid": []}
        for _ in range(args.baseline_epochs):
            for key, k in (("final", None), ("grid", layers)):
                _, _, timing = extract_summaries(
                    bb, train_ds, layers=k, summaries=summaries[:1] if k is None else summaries,
                    batch_size=args.batch_size, device=args.device, progress=False,
                )  # fmt: skip
                passes[key].append(timing["seconds"])
        t_pass = statistics.mean(passes["grid"])
        t_pass1 = statistics.mean(passes["final"])
        for what, n_heads, p_s, heads_s in (
            ("linear probe (1 head)", 1, t_pass1, one.seconds),
            (
                f"probe grid ({len(grid.heads)} heads, {len(variants)} variants)",
                len(grid.heads),
                t_pass,
                t_grid,
            ),
        ):
            cached_total = p_s + heads_s
            baseline_total = args.epochs * p_s + heads_s
            speedup = baseline_total / cached_total
            rows.append(
                (
                    f"{args.epochs}-epoch {what}",
                    f"{cached_total:.1f}s with cache (1 backbone pass {p_s:.1f}s + heads {heads_s:.1f}s)",
                    f"{baseline_total:.0f}s re-running the backbone every epoch ({args.epochs} x {p_s:.2f}s + heads)",
                    f"{speedup:.0f}x faster"
                    + (f" (target >= 50x) {'OK' if speedup >= 50 else 'MISSED'}" if n_heads == 1 else ""),
                )
            )
        warm = time.perf_counter()
        again = get_features(
            bb, dm, "train", layers=layers, pooling=poolings[0], cache_dir=cache, progress=False
        )
        t_warm = time.perf_counter() - warm
        assert again.metadata["cache_hit"]
        rows.append(
            (
                "re-reading cached train features",
                f"{t_warm:.2f}s (cache hit, incl. weight hashing)",
                f"{t_pass:.2f}s backbone pass",
                f"{t_pass / t_warm:.0f}x faster",
            )
        )

        # ---------------------------------------------------------------- 2. extraction vs bare loop
        def bare() -> float:
            loader = DataLoader(
                train_ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate_drop_none
            )
            start = time.perf_counter()
            with torch.inference_mode():
                for images, _ in loader:
                    bb.forward_features(images.to(args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return n_train / (time.perf_counter() - start)

        def ours(i: int) -> float:
            start = time.perf_counter()
            get_features(bb, dm, "train", cache_dir=Path(tmp) / f"tp{i}", batch_size=args.batch_size,
                         device=args.device, progress=False)  # fmt: skip
            return n_train / (time.perf_counter() - start)

        bare(), ours(-1)  # warm-up (allocator, lazy init)
        bare_rates, our_rates = [], []
        with PeakRSS() as mem_tp:
            for i in range(args.repeats):
                bare_rates.append(bare())
                our_rates.append(ours(i))
        b, o = statistics.median(bare_rates), statistics.median(our_rates)
        gap = (b - o) / b
        rows.append(
            (
                "feature extraction, images/s (train split)",
                f"{o:,.0f} img/s get_features (load + forward + write memmap)",
                f"{b:,.0f} img/s bare inference_mode loop",
                f"{abs(100 * gap):.1f}% {'slower' if gap > 0 else 'faster'} than bare (target: at most 5% slower) "
                f"{'OK' if gap <= 0.05 else 'MISSED'}",
            )
        )
        size = sum(p.stat().st_size for p in cache.rglob("*.npy")) / 2**20
        peak = (
            f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
            if args.device.startswith("cuda")
            else ""
        )
        rows.append(
            (
                "peak memory (resident)",
                f"extraction {mem_extract.peak:,.0f} MiB, probe {mem_probe.peak:,.0f} MiB{peak}",
                f"throughput loop {mem_tp.peak:,.0f} MiB",
                f"cached features on disk {size:,.1f} MiB (memory-mapped)",
            )
        )

    table = Table(title=f"bench_probe_cache: {args.backbone} on {args.data}")
    for col in ("figure", "transferkit", "baseline", "ratio"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(
        f"best head {grid.best['name']}: val {100 * grid.val['acc1']:.2f}%, test {100 * grid.test['acc1']:.2f}%"
    )


if __name__ == "__main__":
    main()
